"""Group commit at intake: the booking requests that reach one API process within a couple of
milliseconds are stored by one multi-row statement and one commit.

``write_batch`` runs ``intake_sql.INTAKE_BATCH`` (the user exists, the event exists and has not
started, the quantity is within the event's limit, the event shows the seats or has a
waitlist, the user's pending cap, exact across batches and processes by
``intake_sql.lock_pending_counts``, the event's line bound, ``Idempotency-Key`` replays) for
every request of the batch at once, and answers each one with what
``service.store_request_alone`` would have: its booking or its domain error. Signals go out
after the commit, one per event per batch, not one per request.

If the statement fails for one request's sake (a foreign key whose row was deleted
meanwhile), each request of the batch is stored again alone, the same statement with one row,
so the request that breaks it fails alone with its own error. If the database fails (no
connection, no answer, a timeout), that is every request's answer at once: each alone would
only wait for the same failure again.

``IntakeWriter`` is the API side: requests wait on a future, a timer of ``INTAKE_BATCH_WINDOW``
(or a full batch of ``INTAKE_BATCH_SIZE``) starts a batch on one of ``INTAKE_WRITERS`` threads,
and each future is resolved only after its batch committed, so a 202 is still durable. Each
request has a deadline (``BOOKING_DEADLINE`` after it arrived): past it, it is answered 503
whatever its batch is doing, and if it is still queued it is never written.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from common.bookings import intake_sql, service
from common.bookings.models import Booking
from common.bookings.schemas import BookingCreate, EventFacts
from common.db import session_scope
from common.errors import ServiceUnavailable

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class IntakeRequest:
    user_id: int
    data: BookingCreate
    booking_id: str
    idempotency_key: str | None = None
    # time.monotonic() past which the request is answered and no longer written.
    deadline: float = field(default=math.inf)


# What a request gets: (booking, created) or the exception it would have raised.
Outcome = tuple[Booking, bool] | BaseException


class Stored(NamedTuple):
    """What storing a batch came to: each request's outcome, in order, the events with a new
    request (to signal once the outcomes are answered), and the facts of each event it read."""

    outcomes: list[Outcome]
    signals: list[int]
    facts: dict[int, EventFacts]


class Unanswered(ServiceUnavailable):
    """The database did not take the request by its deadline."""

    default_message = "The booking could not be stored in time, try again"


def late(request: IntakeRequest, *, maybe_stored: bool) -> Unanswered:
    """The 503 of a request past its deadline. One whose batch may still commit names the
    booking it would be: a retry with its ``Idempotency-Key``, or a GET of that id, tells."""
    details = [{"bookingId": request.booking_id}] if maybe_stored else []
    return Unanswered(details=details, headers={"Retry-After": "1"})


def _fails_every_request(exc: BaseException) -> bool:
    """An error of the database, not of a request: no connection, no answer, a timeout."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError | InterfaceError | PoolTimeout)


def write_batch(
    factory: sessionmaker[Session],
    requests: Sequence[IntakeRequest],
    signal: Callable[[int], object],
    max_pending: int | None,
    max_line: int | None = None,
) -> tuple[list[Outcome], dict[int, EventFacts]]:
    """Store a batch in one statement and one commit, then signal its events: each request's
    outcome, in order, and the facts of each event the batch read."""
    stored = store_batch(factory, requests, max_pending, max_line)
    send_signals(signal, stored.signals)
    return stored.outcomes, stored.facts


def store_batch(
    factory: sessionmaker[Session],
    requests: Sequence[IntakeRequest],
    max_pending: int | None,
    max_line: int | None = None,
) -> Stored:
    """``write_batch`` without the signals, which the caller sends once it has answered."""
    try:
        return _write_together(factory, requests, max_pending, max_line)
    except Exception as exc:
        if _fails_every_request(exc):
            return Stored([exc] * len(requests), [], {})
        if len(requests) == 1:
            return Stored([_own_error(exc)], [], {})
        # A foreign key that failed names no row (a user or an event deleted meanwhile):
        # alone, each request's statement tells whose.
        logger.warning("intake batch of %d failed (%s); storing one by one", len(requests), exc)
    outcomes: list[Outcome] = []
    signals: dict[int, None] = {}
    facts: dict[int, EventFacts] = {}
    for request in requests:
        if time.monotonic() >= request.deadline:  # answered already: never written after
            outcomes.append(late(request, maybe_stored=False))
            continue
        try:
            alone = _write_together(factory, [request], max_pending, max_line)
        except Exception as exc:
            outcomes.append(_own_error(exc))
            continue
        outcomes.extend(alone.outcomes)
        signals.update(dict.fromkeys(alone.signals))
        facts.update(alone.facts)
    return Stored(outcomes, list(signals), facts)


def _own_error(exc: Exception) -> BaseException:
    """A lone request's error, a foreign key whose row is gone told as that row's error."""
    if isinstance(exc, IntegrityError):
        return intake_sql.gone_with_the_row(exc) or exc
    return exc


def send_signals(signal: Callable[[int], object], event_ids: Iterable[int]) -> None:
    for event_id in event_ids:  # after the commit, once per event
        try:
            signal(event_id)
        except Exception:  # the rows are committed; a lost signal is what the sweeper is for
            logger.exception("signal for event %s failed", event_id)


def _write_together(
    factory: sessionmaker[Session],
    requests: Sequence[IntakeRequest],
    max_pending: int | None,
    max_line: int | None,
) -> Stored:
    rows = [
        intake_sql.IntakeRow(
            r.user_id,
            r.data.event_id,
            r.data.quantity,
            r.booking_id,
            r.idempotency_key,
            service.request_hash(r.data),
        )
        for r in requests
    ]
    outcomes: list[Outcome] = []
    events: dict[int, None] = {}
    facts: dict[int, EventFacts] = {}
    with session_scope(factory) as session:
        if max_pending is not None:
            intake_sql.lock_pending_counts(session, (r.user_id for r in requests))
        found = intake_sql.intake_rows(session, rows, max_pending, max_line)
        for request, asked, row in zip(requests, rows, found, strict=True):
            if row["known_event"] is not None:
                facts[row["known_event"]] = EventFacts(
                    available=row["available_seats"],
                    version=row["event_version"],
                    max_per_user=row["max_seats_per_user"],
                    starts_at=row["starts_at"],
                    waitlist_up_to=row["waitlist_up_to"],
                )
            try:
                booking, created = service.intake_verdict(
                    session,
                    row,
                    request.user_id,
                    request.data,
                    request.idempotency_key,
                    asked.request_hash,
                    max_pending,
                    max_line,
                )
            except Exception as exc:  # a refusal of this request only
                outcomes.append(exc)
                continue
            if created:
                events[booking.event_id] = None
            outcomes.append((booking, created))
    return Stored(outcomes, list(events), facts)


Waiting = tuple[IntakeRequest, "asyncio.Future[Outcome]"]


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
        """``observe(event_id, facts, seen=monotonic time)`` hears what each batch read
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
        self._queue: list[Waiting] = []
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight = 0

    async def submit(self, request: IntakeRequest) -> tuple[Booking, bool]:
        """The booking and whether it is new, once committed; or the request's own error, or
        503 at its deadline."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        waiting = (request, future)
        self._queue.append(waiting)
        if len(self._queue) >= self.batch_size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.window, self._flush)
        # The loop's clock need not be time.monotonic's (uvloop's is libuv's).
        left = request.deadline - time.monotonic()
        try:
            async with asyncio.timeout(None if math.isinf(left) else left):
                # Shielded: a late request's future is left to its batch, which finds it done.
                outcome = await asyncio.shield(future)
        except TimeoutError:
            queued = waiting in self._queue
            if queued:
                self._queue.remove(waiting)
            future.cancel()
            raise late(request, maybe_stored=not queued) from None
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

    async def _write(self, batch: list[Waiting]) -> None:
        loop = asyncio.get_running_loop()
        requests = [request for request, _ in batch]
        seen = time.monotonic()
        stored = Stored([], [], {})
        try:
            stored = await loop.run_in_executor(
                self._executor,
                store_batch,
                self.factory,
                requests,
                self.max_pending,
                self.max_line,
            )
            outcomes = stored.outcomes
        except BaseException as exc:  # e.g. the executor shut down: nobody waits forever
            outcomes = [exc] * len(batch)
        if self.observe is not None:
            for event_id, event_facts in stored.facts.items():
                self.observe(event_id, event_facts, seen=seen)
        # Answered before the signals: they take Redis's time, and the rows are committed.
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)
        try:
            if stored.signals:
                # Shielded: the rows are committed, so their signal goes even if this task is
                # cancelled (the loop closing) before a writer thread has picked it up.
                await asyncio.shield(
                    loop.run_in_executor(self._executor, send_signals, self.signal, stored.signals)
                )
        finally:
            self._in_flight -= 1
        if self._queue and self._timer is None:
            self._flush()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._executor.shutdown(wait=True)
