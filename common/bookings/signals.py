"""Telling the workers an event has requests to decide: one deduplicated signal per event.

The API calls ``signal_event`` after each intake commit: the Redis key is SET NX with a TTL
and, if it was not there, a drain task is queued. Only one task drains an event at a time (an
advisory lock in ``process_event_queue``). The protocol, in three rules:

1. A draining task deletes the key only after a short batch (``take_signal``), and if the key
   was there it reads again: a request may have committed after the read it just made.
2. A task that finds the event busy leaves at once, after making sure the key is set
   (``signal_event``: if it was gone, it is set and one more task is queued).
3. Nothing else deletes the key, but it expires after ``SIGNAL_TTL``, and ``signal_event``
   takes back a key whose task it could not queue: both are the sweeper's cases.
4. The sweeper does not trust the key (``resignal_event``): it sets it and queues a task
   whether or not the key was there. A key can stand for no task at all: when Redis stops
   answering, intake's SET NX times out and no task is sent, yet Redis applies the SET when it
   resumes. Deduplicating against such a key held the event's decisions until it expired.

Why no request is stranded: a request commits before its SET, so the key is set after its
commit. Whoever deletes the key first after that is a draining task, which then reads (rule 1)
and sees the request, or finds the event busy and sets the key again (rule 2) for the task
holding the event, which cannot end without deleting the key and reading once more (rule 1).
If nobody deletes it, the task queued for it runs: it drains (and ends by rule 1) or finds a
drain that will (rule 2). ``tests/test_drain.py`` makes the tight interleaving certain.

A burst of thousands of requests is thus a handful of tasks, and a long drain is one task plus
one more per ``SIGNAL_TTL`` (the key expires, the next request sends a task, it leaves busy). If
a task is lost, the sweeper sends another for each event with a request older than
``SWEEP_PENDING_AFTER`` that no drain holds, whatever its key says: a lost signal holds an
event's decisions for at most ``SWEEP_PENDING_AFTER + SWEEP_INTERVAL``. The price is at most one
extra task per such event per sweep when the tasks are merely slow (queued behind others),
which finds the event drained or busy and leaves.
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


def resignal_event(client: redis.Redis, sender: TaskSender, event_id: int, ttl: int) -> None:
    """The sweeper's signal: set the event's key and queue a drain task, even if the key was
    there (rule 4)."""
    key = signal_key(event_id)
    client.set(key, "1", ex=ttl)
    try:
        sender.send_task(PROCESS_EVENT, args=[event_id], queue=BOOKINGS_QUEUE)
    except Exception:
        client.delete(key)
        raise


def take_signal(client: redis.Redis, event_id: int) -> bool:
    """Delete the event's signal; True if it was set (a request came since the last take)."""
    return bool(client.delete(signal_key(event_id)))
