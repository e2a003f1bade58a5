"""Telling the workers an event has requests to decide: one deduplicated signal per event.

The API calls ``signal_event`` after each intake commit: the Redis key is SET NX with a TTL
and, if it was not there, a drain task is queued. Only one task drains an event at a time (an
advisory lock in ``process_event_queue``); a task that finds the event busy leaves at once and
leaves the key as it is. The draining task keeps reading batches; when one comes back short it
deletes the key (``take_signal``) and, if the key was there, reads again. So a request is never
stranded, whatever the interleaving: its commit comes before its SET, and the key stays set
until a draining task deletes it, which that task does only before a read of its own. If the
key was set and the task sent for it left busy, the task it found busy deletes the key at the
end of its drain and reads once more. A request committed after the last read of a drain that
has already deleted the key sets it anew and queues a task, which finds the lock free (or, if a
drain holds it again, that drain ends the same way).

A burst of thousands of requests is thus a handful of tasks, and a long drain is one task plus
one more per ``SIGNAL_TTL`` (the key expires, the next request sends a task, it leaves busy). If
a task is lost, the key expires and the sweeper sends through this same function for events no
drain holds (``SIGNAL_TTL``, ``SWEEP_PENDING_AFTER``).
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


def take_signal(client: redis.Redis, event_id: int) -> bool:
    """Delete the event's signal; True if it was set (a request came since the last take)."""
    return bool(client.delete(signal_key(event_id)))
