"""Seat state per event, coalesced: at most one seat message per event per interval, the newest.

The first seat message of an event after a quiet interval goes out at once; those that arrive
within ``WS_COALESCE_INTERVAL`` of it wait, and when the interval ends only the newest of them
goes out (with the batch counts of every message it stands for). A message is never held longer
than one interval, and the newest one is always sent: coalescing hides intermediate states,
never the last one.

A message that moves only the line (its version is the one already sent: no seat changed, as
when a sold-out event rejects requests) waits for ``WS_LINE_INTERVAL`` instead (default 1 s):
the counter does not move, and a sold-out sale's rejections would otherwise cost every watcher
ten messages a second. A seat change arriving meanwhile goes out within the shorter interval.

The interval may grow with the event's watchers (``interval_of``, from ``WS_SEAT_DELIVERIES``):
a process writes every message to every socket, so its cost is watchers x messages; past a
budget of deliveries per second the interval stretches (up to the line interval) so that the
cost stays flat while the last state still goes out within one interval.

Messages of one event are ordered by ``order_key``: the version, then how far the line has
moved (a ``line_update`` may carry a version already known; its line is still news), then the
worker's timestamp (a batch that only waitlists requests moves neither, but changes the
waitlist's length; an event's batches commit one after another under its lock, so their
timestamps, taken after each commit, follow that order unless a worker stalls between its commit
and its publish longer than the next batch takes: then a waitlist count shows one batch late
until the next message). Anything
not newer than what was already sent or is waiting is dropped here, so two workers' messages
delivered out of order never make the count go back.

The newest state of each event is also this process's snapshot of it (``snapshot``): a socket
that subscribes gets it from memory, without a database read.

Pure: no sockets, no asyncio. The caller schedules ``flush(event_id)`` at the time ``offer``
returns and hands the messages ``emit`` receives to the sockets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.bookings.line import departed, parse_cursor
from common.bookings.messages import SEAT_COUNTS, seat_kind

SEAT_TYPES = frozenset({"booking_created", "booking_cancelled", "seat_update", "line_update"})
COUNTS = SEAT_COUNTS
SNAPSHOT_FIELDS = ("eventId", "availableSeats", "seatCapacity", "version")

Key = tuple[int, int, str]
NO_KEY: Key = (-1, -1, "")


def order_key(data: dict[str, Any]) -> Key | None:
    """(version, requests that left the line, the worker's timestamp); None for a message
    without a version."""
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        return None
    cursor = parse_cursor(data.get("line"))
    stamp = data.get("timestamp")
    return (
        version,
        departed(cursor) if cursor is not None else -1,
        stamp if isinstance(stamp, str) else "",
    )


@dataclass(slots=True)
class _Event:
    sent: Key  # the key of the last message emitted
    sent_at: float  # when it was emitted
    pending: dict[str, Any] | None = None  # the newest message waiting for the interval's end
    pending_key: Key = NO_KEY
    merged: dict[str, int] | None = None  # batch counts of every message the pending one covers
    batches: int = 0
    due: float | None = None  # when the waiting message goes out


class Coalescer:
    def __init__(
        self,
        interval: float,
        emit: Callable[[int, Key, dict[str, Any]], None],
        line_interval: float | None = None,
        interval_of: Callable[[int], float] | None = None,
    ) -> None:
        self.interval = interval
        self.line_interval = interval if line_interval is None else max(interval, line_interval)
        self.emit = emit
        # The seat interval of an event, when it depends on the event (its watchers here).
        self.interval_of = interval_of
        self._events: dict[int, _Event] = {}
        # The newest state heard per event (snapshot fields and line), kept even while coalesced,
        # with the time it was last heard or read.
        self._latest: dict[int, tuple[Key, dict[str, Any], float]] = {}

    def snapshot(self, event_id: int, now: float, max_age: float) -> tuple[Key, dict] | None:
        """The newest (key, snapshot) this process has of the event, if heard or read within
        ``max_age`` seconds: during a sale it always is; a quiet event is read again."""
        known = self._latest.get(event_id)
        if known is None or now - known[2] > max_age:
            return None
        return known[0], known[1]

    def remember(self, event_id: int, key: Key, snapshot: dict[str, Any], now: float) -> None:
        """State heard on the channel: kept if newer than what is known."""
        current = self._latest.get(event_id)
        if current is None or key > current[0]:
            self._latest[event_id] = (key, snapshot, now)
        elif key == current[0]:
            self._latest[event_id] = (key, current[1], now)

    def read(self, event_id: int, key: Key, snapshot: dict[str, Any], now: float) -> None:
        """State read from the database, the source of truth: it replaces what is known, and
        messages are ordered after it from now on (an id may have been reused, e.g. by a test
        that empties the database under a running process)."""
        current = self._latest.get(event_id)
        if current is not None and current[0][0] == key[0] and current[0] > key:
            key, snapshot = current[0], current[1]  # the same version, with its line
        self._latest[event_id] = (key, snapshot, now)
        event = self._events.get(event_id)
        if event is not None and event.pending is None:
            event.sent = key

    def forget(self, event_id: int | None = None) -> None:
        """Drop an event's state (deleted), or every event's (the subscription was lost)."""
        if event_id is None:
            self._latest.clear()
            self._events.clear()
        else:
            self._latest.pop(event_id, None)
            self._events.pop(event_id, None)

    def offer(self, event_id: int, message: dict[str, Any], now: float) -> float | None:
        """Take one seat message (or an ``event_updated``, which is never delayed). Returns the
        time at which ``flush(event_id)`` must run, when one is newly needed."""
        data = message.get("data") or {}
        key = order_key(data)
        if key is None:
            return None
        state = {f: data[f] for f in SNAPSHOT_FIELDS if f in data}
        if "line" in data:
            state["line"] = data["line"]
        previous = self._latest.get(event_id)
        if previous is not None and "seatCapacity" not in state:
            state["seatCapacity"] = previous[1].get("seatCapacity")
        self.remember(event_id, key, state, now)
        event = self._events.get(event_id)
        if event is None:
            event = self._events[event_id] = _Event(sent=NO_KEY, sent_at=float("-inf"))
        if key <= event.sent or key <= event.pending_key:
            return None  # older than, or the same as, what went out or waits
        if message.get("type") not in SEAT_TYPES:
            # An admin's change goes out at once, after anything older still waiting.
            self._emit_pending(event_id, event, now)
            self._send(event_id, event, key, message, now)
            return None
        if event.pending is None and now >= self._ready_at(event_id, event, key):
            self._send(event_id, event, key, message, now)
            return None
        merged = event.merged or dict.fromkeys(COUNTS, 0)
        for name in COUNTS:
            value = data.get(name)
            if isinstance(value, int):
                merged[name] += value
        event.pending, event.pending_key, event.merged = message, key, merged
        event.batches += 1
        due = max(now, self._ready_at(event_id, event, key))
        if event.due is not None and event.due <= due:
            return None  # a flush as early is already scheduled
        event.due = due
        return due

    def intervals(self, event_id: int) -> tuple[float, float]:
        """(seat interval, line interval) of the event now."""
        if self.interval_of is None:
            return self.interval, self.line_interval
        seat = max(self.interval, min(self.interval_of(event_id), self.line_interval))
        return seat, max(seat, self.line_interval)

    def _ready_at(self, event_id: int, event: _Event, key: Key) -> float:
        """When a message of ``key`` may go: one interval after the last, or the longer line
        interval if it moves no seats (its version went out already)."""
        seat, line = self.intervals(event_id)
        return event.sent_at + (seat if key[0] != event.sent[0] else line)

    def flush(self, event_id: int, now: float) -> float | None:
        """A scheduled time came: send the newest waiting message if it is due. Returns a time
        to call again when it is not due yet (a timer that fired early)."""
        event = self._events.get(event_id)
        if event is None or event.pending is None or event.due is None:
            return None
        if now < event.due:
            return event.due
        self._emit_pending(event_id, event, now)
        return None

    def _emit_pending(self, event_id: int, event: _Event, now: float) -> None:
        message, key, merged, batches = (
            event.pending,
            event.pending_key,
            event.merged,
            event.batches,
        )
        event.pending, event.pending_key, event.merged, event.batches = None, NO_KEY, None, 0
        event.due = None
        if message is None or key <= event.sent:
            return
        if batches > 1 and merged is not None:
            data = {**message["data"], **merged, "batches": batches}
            message = {"type": seat_kind(merged), "data": data}
        self._send(event_id, event, key, message, now)

    def _send(
        self, event_id: int, event: _Event, key: Key, message: dict[str, Any], now: float
    ) -> None:
        event.sent, event.sent_at = key, now
        self.emit(event_id, key, message)
