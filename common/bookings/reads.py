"""Reads of bookings for their owners and admins: one booking with its place in line, pages of
a user's or an event's bookings (keyset on ``bookings.id``), a streamed export, the audit trail,
and the requests still in line for the sockets of signed-in users.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import NamedTuple, overload

from sqlalchemy import ColumnElement, Row, Select, func, select
from sqlalchemy.orm import Session, sessionmaker

from common.bookings.line import position_of
from common.bookings.models import IN_LINE, Booking, BookingLog
from common.db import session_scope
from common.errors import BookingNotFound, Forbidden, ValidationFailed
from common.events.models import Event
from common.events.service import can_manage, get_event
from common.users.models import User


def with_cursor(query: Select[Booking]) -> Select[Booking, int, list[int]]:
    """``query``'s bookings, each with its event's line cursor read in the same row."""
    return query.add_columns(Event.line_through, Event.line_gone).join(
        Event, Event.id == Booking.event_id
    )


@overload
def placed(row: Row[Booking, int, list[int]]) -> Booking: ...
@overload
def placed(row: None) -> None: ...
def placed(row: Row[Booking, int, list[int]] | None) -> Booking | None:
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
    booking = placed(session.execute(query).one_or_none())
    if booking is None or (booking.user_id != actor.id and not actor.is_admin):
        raise BookingNotFound()
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
    rows = [placed(row) for row in session.execute(with_cursor(query).limit(limit + 1))]
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
            yield placed(row)


def booking_logs(session: Session, actor: User, booking_id: str) -> list[BookingLog]:
    booking = get_booking(session, actor, booking_id)
    rows = session.scalars(
        select(BookingLog)
        .where(BookingLog.booking_id == booking.booking_id)
        .order_by(BookingLog.id)
    )
    return list(rows)


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
