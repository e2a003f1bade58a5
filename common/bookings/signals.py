"""Telling the workers an event has requests to decide: one deduplicated signal per event.

The API calls ``signal_event`` after each intake commit. The Redis key is set while a drain
task for the event is queued; the task deletes it *before* it reads the queue, so a request
committed before a failed SET NX is always seen by that task, and a burst of thousands of
requests becomes a handful of tasks. If a task is lost, the key expires and the sweeper
re-signals (``SIGNAL_TTL``, ``SWEEP_PENDING_AFTER``).
"""

from __future__ import annotations

import logging
from typing import Protocol

import redis

from common.channels import signal_key
from common.tasks import BOOKINGS_QUEUE, PROCESS_EVENT

logger = logging.getLogger(__name__)


class TaskSender(Protocol):
    def send_task(self, name: str, args: list[int], queue: str) -> object: ...


def signal_event(client: redis.Redis, sender: TaskSender, event_id: int, ttl: int) -> bool:
    """Queue a drain task for the event unless one is already queued. True if one was sent."""
    key = signal_key(event_id)
    if not client.set(key, "1", nx=True, ex=ttl):
        return False
    try:
        sender.send_task(PROCESS_EVENT, args=[event_id], queue=BOOKINGS_QUEUE)
    except Exception:
        client.delete(key)
        raise
    return True


def clear_signal(client: redis.Redis, event_id: int) -> None:
    client.delete(signal_key(event_id))
