"""Bookings: intake and cancellation requests (API side), draining an event's queue (worker side),
reads for owners and admins. Services flush; the caller commits and runs on_commit callbacks.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple, overload

from sqlalchemy import ColumnElement, Row, RowMapping, Select, bindparam, func, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import BigInteger, Integer, Text

from common.bookings import procedures
from common.bookings.line import position_of
from common.bookings.models import IN_LINE, Booking, BookingLog
from common.bookings.schemas import BookingCreate, Decision
from common.db import on_commit, session_scope
from common.errors import (
    AlreadyCancelled,
    BookingNotFound,
    BookingRejected,
    DomainError,
    EventNotFound,
    EventPast,
    Forbidden,
    HoldExpired,
    IdempotencyKeyReused,
    InvalidToken,
    QueueFull,
    SoldOut,
    TooManyPending,
    ValidationFailed,
)
from common.events.models import Event
from common.events.service import can_manage, get_event
from common.users.models import User

Signal = Callable[[int], object]


def new_booking_id() -> str:
    return "bk_" + secrets.token_hex(12)


def request_hash(data: BookingCreate) -> str:
    return hashlib.sha256(f"{data.event_id}:{data.quantity}".encode()).hexdigest()


# One round trip decides intake, for one request or a batch of them: ``facts`` reads what the
# checks need, one row per request, and ``ins`` inserts only the requests that pass them all;
# each request's row carries both, so a refusal costs no more than an accept. The booking rules
# are booking_verdict's (migrations/sql/booking_verdict/), asked with no seats held yet and the
# seats the event shows: what is refused at once is refused by them; 'waitlisted' is stored like
# 'confirmed' (the worker decides which it is).
#
# Each event's line is counted under the lock of its arrival counter (``lines``), which the
# insert's trigger (assign_queue_seq) would take anyway, with the batch's own earlier candidates
# for the event, which the insert is about to add: no other request of the event can be stored
# meanwhile, so QUEUE_MAX_PER_EVENT is never passed. The cursor is the statement's snapshot and
# may lag the worker: the count can only be too long, refusing a little early. The counters are
# locked, and the rows inserted, in event order, so two batches with several events never wait
# on each other in a circle; within an event, in arrival order.
#
# A retry of a stored request (its Idempotency-Key) is no candidate: the trigger numbers every
# row it sees, even one ON CONFLICT then drops, and the numbers are meant to have no gaps. Only
# two requests racing with one key still leave a gap, which overstates the places behind it by
# one until the head of the line passes it (the decider's cursor skips it).
#
# Ids are taken as bigint: an id no row can have (a token's 2**40) is then an unknown user or
# event, not a statement that fails.
INTAKE_BATCH = text(
    """
WITH req AS (
    SELECT * FROM unnest(CAST(:ords AS int[]), CAST(:user_ids AS bigint[]),
                         CAST(:event_ids AS bigint[]), CAST(:quantities AS int[]),
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
    bindparam("user_ids", type_=ARRAY(BigInteger)),
    bindparam("event_ids", type_=ARRAY(BigInteger)),
    bindparam("quantities", type_=ARRAY(Integer)),
    bindparam("booking_ids", type_=ARRAY(Text)),
    bindparam("keys", type_=ARRAY(Text)),
    bindparam("hashes", type_=ARRAY(Text)),
)
# What intake stores: the verdicts of a request the worker will decide.
STORED = ("confirmed", "waitlisted")
# The foreign keys intake's insert can trip when its row is deleted under it
# (see store_request_alone).
GONE_WITH_THE_ROW: dict[str, type[DomainError]] = {
    "fk_bookings_event_id_events": EventNotFound,
    "fk_bookings_user_id_users": InvalidToken,
}
BOOKING_COLUMNS = [column.key for column in Booking.__table__.columns]
NO_PENDING_CAP = 2**31 - 1
NO_LINE_CAP = 2**62
# The advisory lock class ('EBSP') that serialises one user's intakes while the pending cap is
# counted, so racing requests cannot all see the same count (process_event_queue's is 'EBSD').
PENDING_LOCK_CLASS = 1162957648
LOCK_USERS = text(
    "SELECT count(pg_advisory_xact_lock(:lock_class, u)) FROM unnest(CAST(:user_ids AS int[])) u"
)


def lock_pending_counts(session: Session, user_ids: Iterable[int]) -> None:
    """Hold each user's pending-cap lock until the transaction ends: the count intake reads is
    then the count it commits against. In id order, so two batches never wait on each other in
    a circle."""
    ids = sorted({u for u in user_ids if 0 < u <= NO_PENDING_CAP})  # no user has any other id
    session.execute(LOCK_USERS, {"lock_class": PENDING_LOCK_CLASS, "user_ids": ids})


class IntakeRow(NamedTuple):
    """One request as ``INTAKE_BATCH`` takes it."""

    user_id: int
    event_id: int
    quantity: int
    booking_id: str
    idempotency_key: str | None
    request_hash: str


def intake_rows(
    session: Session, requests: Sequence[IntakeRow], max_pending: int | None, max_line: int | None
) -> list[RowMapping]:
    """``INTAKE_BATCH`` for these requests: one row per request, in their order."""
    return list(
        session.execute(
            INTAKE_BATCH,
            {
                "ords": list(range(len(requests))),
                "user_ids": [r.user_id for r in requests],
                "event_ids": [r.event_id for r in requests],
                "quantities": [r.quantity for r in requests],
                "booking_ids": [r.booking_id for r in requests],
                "keys": [r.idempotency_key for r in requests],
                "hashes": [r.request_hash for r in requests],
                "max_pending": NO_PENDING_CAP if max_pending is None else max_pending,
                "max_line": NO_LINE_CAP if max_line is None else max_line,
            },
        )
        .mappings()
        .all()
    )


def gone_with_the_row(exc: IntegrityError) -> DomainError | None:
    """The error a request gets when its event (or user) was read, then deleted by a
    transaction that committed before its insert's foreign-key check: to the client it is
    gone, as if it had never been read. None for any other violation."""
    constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)
    gone = GONE_WITH_THE_ROW.get(constraint or "")
    return None if gone is None else gone()


def store_request_alone(
    session: Session,
    user_id: int,
    data: BookingCreate,
    *,
    idempotency_key: str | None,
    signal: Signal,
    max_pending: int | None = None,
    max_line: int | None = None,
    booking_id: str | None = None,
) -> tuple[Booking, bool]:
    """Record one booking request as pending, in a transaction of its own (the caller's), outside
    the group commit of ``common.bookings.intake``, which is how the API stores requests: the
    same statement with one row. Returns the booking and whether it is new.

    Only what is cheap is checked here: the user (a token of a deleted user is refused), the
    event exists and has not started, the quantity is allowed, the user has fewer than
    ``max_pending`` undecided requests (429; exact: the user's intakes take turns while it is
    counted, ``lock_pending_counts``), the event's line is shorter than ``max_line`` (503
    QUEUE_FULL), and the event shows at least as many seats left as asked for, or has a
    waitlist: otherwise 409 SOLD_OUT at once and nothing is stored, since bookings still queued
    can only take seats away (seats a queued cancellation frees go to later requests). Whether
    the seats are really there (or the request is waitlisted), the per-user limit and the start
    time are then decided by the worker in arrival order. ``booking_id`` lets the caller listen
    for the decision before the row exists. A retry with the same ``Idempotency-Key`` gets the
    booking its first request created, whatever the line.
    """
    fingerprint = request_hash(data)
    if max_pending is not None:
        lock_pending_counts(session, [user_id])
    request = IntakeRow(
        user_id,
        data.event_id,
        data.quantity,
        booking_id or new_booking_id(),
        idempotency_key,
        fingerprint,
    )
    try:
        [row] = intake_rows(session, [request], max_pending, max_line)
    except IntegrityError as exc:
        gone = gone_with_the_row(exc)
        if gone is None:
            raise
        raise gone from exc
    booking, created = intake_verdict(
        session, row, user_id, data, idempotency_key, fingerprint, max_pending, max_line
    )
    if created:
        on_commit(session, lambda: signal(data.event_id))
    return booking, created


def intake_verdict(
    session: Session,
    row: Any,
    user_id: int,
    data: BookingCreate,
    idempotency_key: str | None,
    fingerprint: str,
    max_pending: int | None,
    max_line: int | None = None,
) -> tuple[Booking, bool]:
    """What one row of ``INTAKE_BATCH`` means for its request: the booking it stored, with
    its place in line, an idempotent replay, or the refusal, raised as its domain error."""
    if row["known_user"] is None:
        raise InvalidToken()
    if row["known_event"] is None:
        raise EventNotFound()
    if row["id"] is not None:
        booking = Booking(**{key: row[key] for key in BOOKING_COLUMNS})
        booking.queue_position = position_of(
            booking.status, booking.queue_seq, row["line_through"], row["line_gone"]
        )
        return booking, True
    if row["verdict"] == "event_past":
        raise EventPast()
    # A quantity no user may ever book is a bad request (400), before any verdict on seats.
    if data.quantity > row["max_seats_per_user"]:
        message = f"at most {row['max_seats_per_user']} seats per user for this event"
        raise ValidationFailed(details=[{"field": "quantity", "message": message}])
    # Refused, or an idempotent replay: a retry of a request already stored gets its booking.
    existing = _replayed(session, user_id, idempotency_key, fingerprint)
    if existing is not None:
        return existing, False
    if max_pending is not None and row["pending"] >= max_pending:
        raise TooManyPending(headers={"Retry-After": "1"})
    if row["verdict"] in STORED:
        waiting = row["waiting"]
        if waiting is None:  # its line's counter is gone: the event was deleted meanwhile
            raise EventNotFound()
        bound = NO_LINE_CAP if max_line is None else max_line
        message = f"{waiting} requests are in this event's line, at most {bound}"
        raise QueueFull(
            excess=waiting - bound + 1, details=[{"field": "eventId", "message": message}]
        )
    seats = row["available_seats"]
    raise SoldOut(details=[{"field": "quantity", "message": f"{seats} seats left"}])


def _replayed(
    session: Session, user_id: int, idempotency_key: str | None, fingerprint: str
) -> Booking | None:
    """The booking an earlier request with this Idempotency-Key created, if any."""
    if idempotency_key is None:
        return None
    existing = _placed(
        session.execute(
            with_cursor(select(Booking)).where(
                Booking.user_id == user_id, Booking.idempotency_key == idempotency_key
            )
        ).one_or_none()
    )
    if existing is not None and existing.request_hash != fingerprint:
        raise IdempotencyKeyReused()
    return existing


def with_cursor(query: Select[Booking]) -> Select[Booking, int, list[int]]:
    """``query``'s bookings, each with its event's line cursor read in the same row."""
    return query.add_columns(Event.line_through, Event.line_gone).join(
        Event, Event.id == Booking.event_id
    )


@overload
def _placed(row: Row[Booking, int, list[int]]) -> Booking: ...
@overload
def _placed(row: None) -> None: ...
def _placed(row: Row[Booking, int, list[int]] | None) -> Booking | None:
    """The booking of a ``with_cursor`` row, with its place in line."""
    if row is None:
        return None
    booking, through, gone = row
    booking.queue_position = position_of(booking.status, booking.queue_seq, through, gone)
    return booking


def get_booking(
    session: Session, actor: User, booking_id: str, *, for_update: bool = False
) -> Booking:
    """A booking the actor may see, with its place in line; someone else's is reported as not
    found. ``for_update`` locks the booking, never its event."""
    query = with_cursor(select(Booking)).where(Booking.booking_id == booking_id)
    if for_update:
        query = query.with_for_update(of=Booking)
    booking = _placed(session.execute(query).one_or_none())
    if booking is None or (booking.user_id != actor.id and not actor.is_admin):
        raise BookingNotFound()
    return booking


def request_cancellation(session: Session, actor: User, booking_id: str, signal: Signal) -> Booking:
    """Record the wish to cancel; the worker frees the seats. Asking twice is harmless."""
    booking = get_booking(session, actor, booking_id, for_update=True)
    if booking.status == "cancelled":
        raise AlreadyCancelled()
    if booking.status == "rejected":
        raise BookingRejected()
    if booking.status == "expired":
        raise HoldExpired("The hold has expired: its seats are back on sale already")
    if booking.cancel_requested_at is not None:
        return booking
    event = session.get(Event, booking.event_id)
    if event is not None and event.event_date <= datetime.now(UTC):
        raise EventPast("A booking cannot be cancelled once the event has started")
    booking.cancel_requested_at = datetime.now(UTC)
    session.flush()
    on_commit(session, lambda: signal(booking.event_id))
    return booking


class PageOf(NamedTuple):
    rows: list[Booking]
    total: int | None
    next_cursor: str | None


def _page(
    session: Session,
    query: Select[Booking],
    scope: ColumnElement[bool],
    *,
    newest_first: bool,
    limit: int,
    offset: int,
    after: str | None,
) -> PageOf:
    """Keyset pagination on ``bookings.id``: ``after`` (a bookingId within ``scope``) starts the
    page past that booking, whatever happened to the rows before it; without it, the first page
    (or ``offset``, kept for old clients) with its ``total``. One row more than asked tells
    whether there is a next page."""
    total = None
    if after is None:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        query = query.offset(offset)
    else:
        anchor = session.scalar(select(Booking.id).where(scope, Booking.booking_id == after))
        if anchor is None:
            raise ValidationFailed(
                "after is not a bookingId of this list",
                details=[{"field": "after", "message": "unknown cursor"}],
            )
        query = query.where(Booking.id < anchor if newest_first else Booking.id > anchor)
    rows = [_placed(row) for row in session.execute(with_cursor(query).limit(limit + 1))]
    more = len(rows) > limit
    rows = rows[:limit]
    return PageOf(rows, total, rows[-1].booking_id if more else None)


def list_user_bookings(
    session: Session,
    user: User,
    *,
    status: str | None,
    limit: int,
    offset: int = 0,
    after: str | None = None,
) -> PageOf:
    scope = Booking.user_id == user.id
    query = select(Booking).where(scope)
    if status:
        query = query.where(Booking.status == status)
    query = query.order_by(Booking.id.desc())
    return _page(session, query, scope, newest_first=True, limit=limit, offset=offset, after=after)


def event_bookings_query(
    session: Session, actor: User, event_id: int, status: str | None
) -> Select[Booking]:
    event = get_event(session, event_id)
    if not can_manage(actor, event):
        raise Forbidden("Only an admin or the event's creator can list its bookings")
    query = select(Booking).where(Booking.event_id == event_id)
    if status:
        query = query.where(Booking.status == status)
    return query.order_by(Booking.id)


def list_event_bookings(
    session: Session,
    actor: User,
    event_id: int,
    *,
    status: str | None,
    limit: int,
    offset: int = 0,
    after: str | None = None,
) -> PageOf:
    query = event_bookings_query(session, actor, event_id, status)
    scope = Booking.event_id == event_id
    return _page(session, query, scope, newest_first=False, limit=limit, offset=offset, after=after)


def stream_bookings(factory: sessionmaker[Session], query: Select[Booking]) -> Iterator[Booking]:
    """Every row of ``query``, with its place in line, from a server-side cursor, a thousand at
    a time, in a session of its own that lives as long as the iteration (a streamed response
    outlives the request's)."""
    streamed = with_cursor(query).execution_options(stream_results=True, yield_per=1000)
    with session_scope(factory) as session:
        for row in session.execute(streamed):
            yield _placed(row)


def booking_logs(session: Session, actor: User, booking_id: str) -> list[BookingLog]:
    booking = get_booking(session, actor, booking_id)
    rows = session.scalars(
        select(BookingLog)
        .where(BookingLog.booking_id == booking.booking_id)
        .order_by(BookingLog.id)
    )
    return list(rows)


class Drained(NamedTuple):
    decisions: list[Decision]
    busy: bool  # left because another task was draining the event


def drain_event(
    factory: sessionmaker[Session],
    event_id: int,
    *,
    batch_size: int,
    worker: str,
    publish: Callable[[list[Decision]], object],
    take_signal: Callable[[], bool],
    resignal: Callable[[], object],
) -> Drained:
    """Decide every queued request of one event, a batch per transaction, publishing each
    batch after it commits. If another task is draining the event, make sure its signal is set
    (``resignal``) and leave at once. After a short batch, take the event's signal and, if a
    request signalled meanwhile, read again (the protocol of common/bookings/signals.py). Safe
    to run twice or in parallel: only undecided rows are touched, one drain at a time.
    """
    decided: list[Decision] = []
    while True:
        try:
            with session_scope(factory) as session:
                batch = procedures.process_event_queue(session, event_id, batch_size, worker)
                if batch:
                    on_commit(session, lambda batch=batch: publish(batch))  # type: ignore[misc]
        except procedures.EventBusy:
            # The drain holding the event ends by taking the signal and reading again.
            resignal()
            return Drained(decided, busy=True)
        decided.extend(batch)
        if len(batch) < batch_size and not take_signal():
            return Drained(decided, busy=False)


def pending_event_ids(session: Session, older_than_seconds: float) -> list[int]:
    """Events with a request waiting longer than it should that no drain is working on: their
    signal or task was lost. (A hot event's backlog is older than that while it drains.) And
    events that have started with requests still waitlisted: nothing else tells the decider
    to reject them (``event_past``). And events with holds that ended longer ago than that
    and are still held: their expiry timer was lost."""
    cutoff = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, older_than_seconds)
    pending = select(Booking.event_id).where(
        Booking.status == "pending", Booking.created_at < cutoff
    )
    cancelling = select(Booking.event_id).where(
        Booking.status.in_(("pending", "waitlisted", "held", "confirmed")),
        Booking.cancel_requested_at < cutoff,
    )
    started = select(Event.id).where(Event.waitlist_length > 0, Event.event_date <= func.now())
    # Holds past their end that their timer did not expire (a lost task, a dead worker, Redis
    # lost with the task): idx_bookings_held_expiry.
    lapsed = select(Booking.event_id).where(Booking.status == "held", Booking.expires_at < cutoff)
    waiting = set(session.scalars(pending.union(cancelling, started, lapsed)))
    return sorted(waiting - procedures.events_being_drained(session))


class WaitingBooking(NamedTuple):
    """A request still in its event's line, with the event's cursor as the same read saw it."""

    booking_id: str
    user_id: int
    event_id: int
    queue_seq: int
    status: str
    line_through: int
    line_gone: list[int]


def waiting_bookings(session: Session, user_ids: Collection[int]) -> list[WaitingBooking]:
    """The users' pending and waitlisted requests joined with their events' cursors: one query
    for a socket that signs in (or for every signed-in user after a resync), from which the
    API works out places in line (``common.bookings.line``) without asking again."""
    if not user_ids:
        return []
    rows = session.execute(
        select(
            Booking.booking_id,
            Booking.user_id,
            Booking.event_id,
            Booking.queue_seq,
            Booking.status,
            Event.line_through,
            Event.line_gone,
        )
        .join(Event, Event.id == Booking.event_id)
        .where(Booking.user_id.in_(list(user_ids)), Booking.status.in_(IN_LINE))
        .order_by(Booking.event_id, Booking.queue_seq)
    )
    return [WaitingBooking(*row) for row in rows]
