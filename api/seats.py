"""Refusing from memory: each API process keeps every event's latest seat snapshot.

The seat messages the workers publish after each committed batch (``availableSeats`` with the
event's ``version``) and admin changes (``event_updated``) already reach every API process on
its one Redis subscription; ``SeatSnapshots`` keeps the newest per event. A request for more
seats than the snapshot shows is answered 409 ``SOLD_OUT`` at once: no database round trip, no
thread, nothing stored, which is what intake's SQL would have answered (seats still queued can
only be taken, never given back, before the worker decides them).

A snapshot refuses only while it is fresh: at most ``SEAT_SNAPSHOT_MAX_AGE`` seconds since it
was read or last confirmed by a message. Every intake batch reads the event's row anyway and
hands its facts here, so under load the snapshot is confirmed by the requests themselves; when
it is missing or stale the request goes to the database, and one background read per
event (never one per request, never awaited by a request) renews it. So seats freed by a
cancellation are offered again as soon as its message arrives, and at the latest after that
bound; a reconnect of the subscription (messages may have been missed) forgets every snapshot.
Anything the snapshot does not settle (enough seats shown, a started event, a quantity over the
limit, an ``Idempotency-Key``) goes to the database.

An event with a waitlist refuses from memory only a request for more seats than it holds at
all: any other request it cannot seat now is stored and waitlisted. Nor is a full line (503
``QUEUE_FULL``) refused from memory: the line grows with every request any API process stores,
which no snapshot here sees exactly, so intake's SQL counts it. What this process does keep for
it is each event's pace: the seat messages carry the line's cursor (``line``: every number up to
``through`` and those in ``gone`` have left it), so ``through + len(gone)`` is how many requests
have left the line; ``LinePace`` turns the recent rate of that count into the ``Retry-After`` of
a ``QUEUE_FULL``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from common.bookings.line import departed, parse_cursor
from common.bookings.schemas import EventFacts
from common.db import session_scope

logger = logging.getLogger(__name__)

READ = text(
    "SELECT available_seats, version, max_seats_per_user, extract(epoch FROM event_date),"
    " CASE WHEN waitlist_enabled THEN seat_capacity ELSE 0 END FROM events WHERE id = :id"
)
# Retry-After of a QUEUE_FULL (docs/API.md, "Waiting room"): the seconds the line needs, at the
# pace measured over the last PACE_WINDOW seconds, to let one more request in; within these
# bounds, and UNKNOWN_PACE_RETRY without a pace.
PACE_WINDOW = 30.0
PACE_SAMPLES = 64
RETRY_BOUNDS = (1, 60)
UNKNOWN_PACE_RETRY = 5


class Seats(NamedTuple):
    facts: EventFacts
    seen: float  # monotonic time it was read or confirmed


class SeatSnapshots:
    def __init__(self, factory: sessionmaker[Session], max_age: float) -> None:
        self.factory = factory
        self.max_age = max_age
        self._seats: dict[int, Seats] = {}
        self._reads: dict[int, asyncio.Future[None]] = {}
        self.pace = LinePace()

    def seats_left_if_sold_out(self, event_id: int, quantity: int) -> int | None:
        """The seats left if the event surely cannot take ``quantity`` more (409 SOLD_OUT from
        memory); else None (the database decides)."""
        if self.max_age <= 0:
            return None
        seats = self._seats.get(event_id)
        if seats is None or time.monotonic() - seats.seen > self.max_age:
            self._refresh(event_id)  # for the requests after this one
            return None
        facts = seats.facts
        if (
            facts.available >= quantity
            or quantity <= facts.waitlist_up_to  # stored and waitlisted, not sold out
            or quantity > facts.max_per_user  # the limit's own error, from the database
            or facts.starts_at <= time.time()  # EVENT_PAST, from the database
        ):
            return None
        return facts.available

    def _refresh(self, event_id: int) -> None:
        if event_id in self._reads:
            return
        task = asyncio.ensure_future(self._read_into(event_id))
        self._reads[event_id] = task
        task.add_done_callback(lambda _: self._reads.pop(event_id, None))

    async def _read_into(self, event_id: int) -> None:
        seen = time.monotonic()
        try:
            facts = await asyncio.get_running_loop().run_in_executor(None, self._read, event_id)
        except Exception as exc:  # the requests went to the database; the next one retries
            logger.warning("seat snapshot of event %s not read: %s", event_id, exc)
            return
        if facts is not None:
            self.observe(event_id, facts, seen=seen)

    def _read(self, event_id: int) -> EventFacts | None:
        with session_scope(self.factory) as session:
            row = session.execute(READ, {"id": event_id}).one_or_none()
        if row is None:
            return None
        return EventFacts(
            available=row[0],
            version=row[1],
            max_per_user=row[2],
            starts_at=float(row[3]),
            waitlist_up_to=row[4],
        )

    def observe(self, event_id: int, facts: EventFacts, *, seen: float) -> None:
        """Facts read from the event's row at monotonic time ``seen`` (a read, an intake batch)."""
        self._keep(event_id, Seats(facts, seen))

    def _keep(self, event_id: int, seats: Seats) -> None:
        current = self._seats.get(event_id)
        if (
            current is None
            or seats.facts.version > current.facts.version
            or (seats.facts.version == current.facts.version and seats.seen >= current.seen)
        ):
            self._seats[event_id] = seats

    def on_message(self, kind: str, ident: int, message: dict[str, Any]) -> None:
        """A Hub listener: seat and admin messages update the snapshot; a resync forgets all."""
        if kind == "resync":
            self._seats.clear()
            return
        if kind != "event":
            return
        data = message.get("data") or {}
        if message.get("type") == "event_deleted":
            self._seats.pop(ident, None)
            self.pace.forget(ident)
            return
        self.pace.heard(ident, data.get("line"))
        available, version = data.get("availableSeats"), data.get("version")
        if not isinstance(available, int) or not isinstance(version, int):
            return
        current = self._seats.get(ident)
        if message.get("type") == "event_updated":
            try:
                starts_at = datetime.fromisoformat(data["eventDate"]).timestamp()
                max_per_user = int(data["maxSeatsPerUser"])
                waitlist = data["waitlistEnabled"]
                if not isinstance(waitlist, bool):
                    raise TypeError("waitlistEnabled")
                waitlist_up_to = int(data["seatCapacity"]) if waitlist else 0
            except (KeyError, TypeError, ValueError):
                self._seats.pop(ident, None)
                return
        elif current is not None:
            starts_at, max_per_user = current.facts.starts_at, current.facts.max_per_user
            waitlist_up_to = current.facts.waitlist_up_to
        else:
            return  # a seat message alone lacks the limit and the date: read when needed
        facts = EventFacts(
            available=available,
            version=version,
            max_per_user=max_per_user,
            starts_at=starts_at,
            waitlist_up_to=waitlist_up_to,
        )
        self._keep(ident, Seats(facts, time.monotonic()))


class LinePace:
    """How fast each event's line moves, as this process hears it from the seat messages."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        # Per event, (clock time, requests that had left its line), the count rising.
        self._departed: dict[int, deque[tuple[float, int]]] = {}

    def heard(self, event_id: int, line: Any) -> None:
        """Note how many requests had left the event's line, from a seat message's ``line``."""
        cursor = parse_cursor(line)
        if cursor is None:
            return
        left = departed(cursor)
        samples = self._departed.get(event_id)
        if samples is None:
            samples = self._departed[event_id] = deque(maxlen=PACE_SAMPLES)
        # Messages of one event can arrive out of order: an older cursor says nothing new.
        if not samples or left > samples[-1][1]:
            samples.append((self.clock(), left))

    def forget(self, event_id: int) -> None:
        self._departed.pop(event_id, None)

    def rate(self, event_id: int) -> float | None:
        """Requests leaving the event's line per second, over the last ``PACE_WINDOW`` seconds
        (up to now, so a line that stopped moving slows down); None if not measured."""
        samples = self._departed.get(event_id)
        now = self.clock()
        while samples and now - samples[0][0] > PACE_WINDOW:
            samples.popleft()
        if not samples or len(samples) < 2:
            return None
        (first, departed_first), (_, departed_last) = samples[0], samples[-1]
        return (departed_last - departed_first) / max(now - first, 1e-3)

    def retry_after(self, event_id: int, excess: int) -> int:
        """Seconds until ``excess`` more requests have left the event's line at its pace."""
        rate = self.rate(event_id)
        if rate is None:
            return UNKNOWN_PACE_RETRY
        low, high = RETRY_BOUNDS
        return max(low, min(high, math.ceil(max(excess, 1) / rate)))
