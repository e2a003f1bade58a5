"""Bookings: intake and cancellation requests (API side). Services flush; the caller commits and
runs on_commit callbacks. The intake statement is ``intake_sql``, reads are ``reads``, the
worker's drain is ``drain`` and the sweeper's query ``sweeper``.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.bookings.intake_sql import (
    NO_LINE_CAP,
    IntakeRow,
    gone_with_the_row,
    intake_rows,
    lock_pending_counts,
)
from common.bookings.line import position_of
from common.bookings.models import Booking
from common.bookings.reads import get_booking, placed, with_cursor
from common.bookings.schemas import BookingCreate
from common.db import on_commit
from common.errors import (
    AlreadyCancelled,
    BookingRejected,
    EventNotFound,
    EventPast,
    HoldExpired,
    IdempotencyKeyReused,
    InvalidToken,
    QueueFull,
    SoldOut,
    TooManyPending,
    ValidationFailed,
)
from common.events.models import Event
from common.users.models import User

Signal = Callable[[int], object]


def new_booking_id() -> str:
    return "bk_" + secrets.token_hex(12)


def request_hash(data: BookingCreate) -> str:
    return hashlib.sha256(f"{data.event_id}:{data.quantity}".encode()).hexdigest()


# What intake stores: the verdicts of a request the worker will decide.
STORED = ("confirmed", "waitlisted")
BOOKING_COLUMNS = [column.key for column in Booking.__table__.columns]


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
    existing = placed(
        session.execute(
            with_cursor(select(Booking)).where(
                Booking.user_id == user_id, Booking.idempotency_key == idempotency_key
            )
        ).one_or_none()
    )
    if existing is not None and existing.request_hash != fingerprint:
        raise IdempotencyKeyReused()
    return existing


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
