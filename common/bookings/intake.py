"""Group commit at intake: the booking requests that reach one API process within a couple of
milliseconds are stored by one multi-row statement and one commit.

``write_batch`` runs the same checks as ``service.INTAKE`` (the user exists, the event exists
and has not started, the quantity is within the event's limit, the event shows the seats or has
a waitlist, the user's pending cap, exact across batches and processes by
``service.lock_pending_counts``, the event's line bound, ``Idempotency-Key`` replays) for
every request of the batch at once, and answers each one with what ``service.request_booking``
would have: its booking or its domain error. Signals go out after the commit, one per event
per batch, not one per request.

If the batch statement fails as a whole, each of its requests is retried on its own (the
single-request path), so a request that breaks the statement fails alone with its own error.

``IntakeWriter`` is the API side: requests wait on a future, a timer of ``INTAKE_BATCH_WINDOW``
(or a full batch of ``INTAKE_BATCH_SIZE``) starts a batch on one of ``INTAKE_WRITERS`` threads,
and each future is resolved only after its batch committed, so a 202 is still durable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import Integer, Text

from common.bookings import service
from common.bookings.models import Booking
from common.bookings.schemas import BookingCreate
from common.db import session_scope

logger = logging.getLogger(__name__)

# The batched twin of service.INTAKE: one row of facts per request (the rules are
# booking_verdict's, as there), and every request's facts returned beside its inserted row (if
# any). As there, a stored request's retry is no candidate (no gap in the numbers), and each
# event's line is counted under its arrival counter's lock: here with the batch's own earlier
# candidates for the event, which its insert is about to add. The counters are locked, and the
# rows inserted, in event order, so two batches with several events never wait on each other in
# a circle; within an event, in arrival order.
INTAKE_BATCH = text(
    """
WITH req AS (
    SELECT * FROM unnest(CAST(:ords AS int[]), CAST(:user_ids AS int[]),
                         CAST(:event_ids AS int[]), CAST(:quantities AS int[]),
                         CAST(:booking_ids AS text[]), CAST(:keys AS text[]),
                         CAST(:hashes AS text[]))
        AS r(ord, r_user, r_event, r_quantity, r_booking, r_key, r_hash)
), facts AS (
    SELECT r.*, u.id AS known_user, e.id AS known_event,
           booking_verdict(e, r.r_quantity, e.available_seats, 0) AS verdict,
           e.max_seats_per_user, e.available_seats, e.version AS event_version,
           extract(epoch FROM e.event_date)::float8 AS starts_at,
           CASE WHEN e.waitlist_enabled THEN e.seat_capacity ELSE 0 END AS waitlist_up_to,
           e.line_through, e.line_gone,
           (SELECT count(*) FROM (
                SELECT 1 FROM bookings p WHERE p.user_id = r.r_user AND p.status = 'pending'
                LIMIT :max_pending) mine) AS pending,
           EXISTS (SELECT 1 FROM bookings k
                   WHERE k.user_id = r.r_user AND k.idempotency_key = r.r_key) AS replay
    FROM req r
    LEFT JOIN users u ON u.id = r.r_user
    LEFT JOIN events e ON e.id = r.r_event
), storable AS (
    SELECT f.*, (f.known_user IS NOT NULL AND f.known_event IS NOT NULL
                 AND f.verdict IN ('confirmed', 'waitlisted') AND NOT f.replay) AS storable
    FROM facts f
), counted AS (
    -- A user's earlier requests in this batch that pass the other checks count towards their
    -- pending cap too: the statement's own inserts are not visible to its subqueries.
    SELECT f.*, f.pending + coalesce(count(*) FILTER (WHERE f.storable) OVER (
               PARTITION BY f.r_user ORDER BY f.ord
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS in_flight
    FROM storable f
), candidates AS (
    SELECT c.*, c.storable AND c.in_flight < :max_pending AS candidate
    FROM counted c
), lines AS (
    SELECT l.event_id, l.arrived FROM event_lines l
    WHERE l.event_id IN (SELECT c.known_event FROM candidates c WHERE c.candidate)
    ORDER BY l.event_id
    FOR UPDATE
), ranked AS (
    -- NULL unless every other check passed.
    SELECT c.*, l.arrived - c.line_through - cardinality(c.line_gone) + count(*) FILTER (
               WHERE c.candidate) OVER (
               PARTITION BY c.known_event ORDER BY c.ord
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS waiting
    FROM candidates c LEFT JOIN lines l ON l.event_id = c.known_event AND c.candidate
), ins AS (
    INSERT INTO bookings (booking_id, user_id, event_id, quantity, idempotency_key, request_hash)
    SELECT f.r_booking, f.known_user, f.known_event, f.r_quantity, f.r_key, f.r_hash
    FROM ranked f
    WHERE f.waiting < :max_line
    ORDER BY f.known_event, f.ord
    ON CONFLICT (user_id, idempotency_key) DO NOTHING
    RETURNING *
)
SELECT f.ord, f.known_user, f.known_event, f.verdict, f.max_seats_per_user, f.available_seats,
       f.event_version, f.starts_at, f.waitlist_up_to, f.in_flight AS pending, f.waiting,
       f.line_through, f.line_gone, ins.*
FROM ranked f LEFT JOIN ins ON ins.booking_id = f.r_booking
ORDER BY f.ord
"""
).bindparams(
    bindparam("ords", type_=ARRAY(Integer)),
    bindparam("user_ids", type_=ARRAY(Integer)),
    bindparam("event_ids", type_=ARRAY(Integer)),
    bindparam("quantities", type_=ARRAY(Integer)),
    bindparam("booking_ids", type_=ARRAY(Text)),
    bindparam("keys", type_=ARRAY(Text)),
    bindparam("hashes", type_=ARRAY(Text)),
)


@dataclass(slots=True)
class IntakeRequest:
    user_id: int
    data: BookingCreate
    booking_id: str
    idempotency_key: str | None = None


# What a request gets: (booking, created) or the exception it would have raised.
Outcome = tuple[Booking, bool] | BaseException
# An event's row as the batch read it: (available seats, version, max per user, starts at,
# most seats a request may ask for and be waitlisted: api.seats.Seats).
EventFacts = tuple[int, int, int, float, int]


def write_batch(
    factory: sessionmaker[Session],
    requests: Sequence[IntakeRequest],
    signal: Callable[[int], object],
    max_pending: int | None,
    max_line: int | None = None,
) -> tuple[list[Outcome], dict[int, EventFacts]]:
    """Store a batch in one statement and one commit: each request's outcome, in order, and
    the facts of each event the batch read."""
    try:
        outcomes, signals, facts = _write_together(factory, requests, max_pending, max_line)
    except Exception as exc:
        # A foreign key that failed names no row (a user or an event deleted meanwhile): alone,
        # INTAKE tells whose. Anything else of a single request is its own error already.
        if len(requests) == 1 and not isinstance(exc, IntegrityError):
            return [exc], {}
        logger.warning("intake batch of %d failed (%s); storing one by one", len(requests), exc)
        return [
            _write_alone(factory, request, signal, max_pending, max_line) for request in requests
        ], {}
    for event_id in signals:  # after the commit, once per event
        try:
            signal(event_id)
        except Exception:  # the rows are committed; a lost signal is what the sweeper is for
            logger.exception("signal for event %s failed", event_id)
    return outcomes, facts


def _write_together(
    factory: sessionmaker[Session],
    requests: Sequence[IntakeRequest],
    max_pending: int | None,
    max_line: int | None,
) -> tuple[list[Outcome], list[int], dict[int, EventFacts]]:
    cap = service.NO_PENDING_CAP if max_pending is None else max_pending
    hashes = [service.request_hash(r.data) for r in requests]
    outcomes: list[Outcome] = []
    events: dict[int, None] = {}
    facts: dict[int, EventFacts] = {}
    with session_scope(factory) as session:
        if max_pending is not None:
            service.lock_pending_counts(session, (r.user_id for r in requests))
        rows = (
            session.execute(
                INTAKE_BATCH,
                {
                    "ords": list(range(len(requests))),
                    "user_ids": [r.user_id for r in requests],
                    "event_ids": [r.data.event_id for r in requests],
                    "quantities": [r.data.quantity for r in requests],
                    "booking_ids": [r.booking_id for r in requests],
                    "keys": [r.idempotency_key for r in requests],
                    "hashes": hashes,
                    "max_pending": cap,
                    "max_line": service.NO_LINE_CAP if max_line is None else max_line,
                },
            )
            .mappings()
            .all()
        )
        for request, fingerprint, row in zip(requests, hashes, rows, strict=True):
            if row["known_event"] is not None:
                facts[row["known_event"]] = (
                    row["available_seats"],
                    row["event_version"],
                    row["max_seats_per_user"],
                    row["starts_at"],
                    row["waitlist_up_to"],
                )
            try:
                booking, created = service.intake_verdict(
                    session,
                    row,
                    request.user_id,
                    request.data,
                    request.idempotency_key,
                    fingerprint,
                    max_pending,
                    max_line,
                )
            except Exception as exc:  # a refusal of this request only
                outcomes.append(exc)
                continue
            if created:
                events[booking.event_id] = None
            outcomes.append((booking, created))
    return outcomes, list(events), facts


def _write_alone(
    factory: sessionmaker[Session],
    request: IntakeRequest,
    signal: Callable[[int], object],
    max_pending: int | None,
    max_line: int | None,
) -> Outcome:
    try:
        with session_scope(factory) as session:
            return service.request_booking(
                session,
                request.user_id,
                request.data,
                idempotency_key=request.idempotency_key,
                signal=signal,
                max_pending=max_pending,
                max_line=max_line,
                booking_id=request.booking_id,
            )
    except Exception as exc:
        return exc


class IntakeWriter:
    """One per API process: gathers requests, writes them in batches on its own threads."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        signal: Callable[[int], object],
        *,
        max_pending: int | None,
        max_line: int | None = None,
        window: float,
        batch_size: int,
        writers: int,
        observe: Callable[..., object] | None = None,
    ) -> None:
        """``observe(event_id, *EventFacts, seen=monotonic time)`` hears what each batch read
        of its events (the API's seat snapshots)."""
        self.factory = factory
        self.observe = observe
        self.signal = signal
        self.max_pending = max_pending
        self.max_line = max_line
        self.window = window
        self.batch_size = batch_size
        self.writers = writers
        self._executor = ThreadPoolExecutor(writers, thread_name_prefix="intake")
        self._queue: list[tuple[IntakeRequest, asyncio.Future[Outcome]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight = 0

    async def submit(self, request: IntakeRequest) -> tuple[Booking, bool]:
        """The booking and whether it is new, once committed; or the request's own error."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._queue.append((request, future))
        if len(self._queue) >= self.batch_size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.window, self._flush)
        outcome = await future
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # Every writer busy: the queue keeps filling and goes when one is done.
        while self._queue and self._in_flight < self.writers:
            batch = self._queue[: self.batch_size]
            del self._queue[: self.batch_size]
            self._in_flight += 1
            asyncio.ensure_future(self._write(batch))

    async def _write(self, batch: list[tuple[IntakeRequest, asyncio.Future[Outcome]]]) -> None:
        loop = asyncio.get_running_loop()
        requests = [request for request, _ in batch]
        seen = time.monotonic()
        facts: dict[int, EventFacts] = {}
        try:
            outcomes: list[Any]
            outcomes, facts = await loop.run_in_executor(
                self._executor,
                write_batch,
                self.factory,
                requests,
                self.signal,
                self.max_pending,
                self.max_line,
            )
        except BaseException as exc:  # e.g. the executor shut down: nobody waits forever
            outcomes = [exc] * len(batch)
        finally:
            self._in_flight -= 1
        if self.observe is not None:
            for event_id, event_facts in facts.items():
                self.observe(event_id, *event_facts, seen=seen)
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)
        if self._queue and self._timer is None:
            self._flush()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._executor.shutdown(wait=True)
