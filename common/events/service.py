"""Events: listing, creation, changes by their admin or creator. Services flush; callers commit."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Collection
from datetime import UTC, datetime

import redis
from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from common.bookings import procedures
from common.bookings.holds import TaskSender, schedule_expiry
from common.bookings.messages import publish_decisions
from common.bookings.models import Booking
from common.db import on_commit
from common.errors import (
    CapacityBelowBooked,
    EventHasBookings,
    EventNotFound,
    EventPast,
    Forbidden,
)
from common.events.messages import publish_event_deleted, publish_event_updated
from common.events.models import Event, EventLine
from common.events.schemas import EventCreate, EventUpdate, SeatSnapshot
from common.users.models import User
from common.webhooks.deliverer import concerned, enabled_scopes


def list_events(
    session: Session, *, limit: int, offset: int, upcoming: bool, q: str | None
) -> tuple[list[Event], int]:
    query = select(Event)
    if upcoming:
        query = query.where(Event.event_date > func.now())
    if q:
        escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Event.name.ilike(f"%{escaped}%", escape="\\"))
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Event.event_date, Event.id).limit(limit).offset(offset))
    return list(rows), total


def get_event(session: Session, event_id: int, *, for_update: bool = False) -> Event:
    query = select(Event).where(Event.id == event_id)
    if for_update:
        query = query.with_for_update()
    event = session.scalar(query)
    if event is None:
        raise EventNotFound()
    return event


def seat_snapshots(session: Session, event_ids: Collection[int]) -> list[SeatSnapshot]:
    """Seats and version of each event that exists, for a live client to start or resync from."""
    if not event_ids:
        return []
    rows = session.execute(
        select(Event.id, Event.available_seats, Event.seat_capacity, Event.version).where(
            Event.id.in_(list(event_ids))
        )
    )
    return [
        SeatSnapshot(event_id=i, available_seats=a, seat_capacity=c, version=v)
        for i, a, c, v in rows
    ]


def can_manage(actor: User, event: Event) -> bool:
    return actor.is_admin or event.created_by == actor.id


def create_event(session: Session, actor: User, data: EventCreate) -> Event:
    if not actor.is_admin:
        raise Forbidden("Only admins can create events")
    event = Event(
        **data.model_dump(),
        available_seats=data.seat_capacity,
        created_by=actor.id,
    )
    session.add(event)
    session.flush()
    session.refresh(event)
    return event


def update_event(
    session: Session,
    actor: User,
    event_id: int,
    data: EventUpdate,
    publisher: redis.Redis,
    sender: TaskSender | None = None,
    kick_webhooks: Callable[[int], object] | None = None,
) -> Event:
    # The row lock orders this change with the worker's batches on the same event.
    event = get_event(session, event_id, for_update=True)
    if not can_manage(actor, event):
        raise Forbidden("Only an admin or the event's creator can change it")
    if event.event_date <= datetime.now(UTC):
        raise EventPast("An event that has started cannot be changed")
    changes = data.model_dump(exclude_unset=True)
    booked = event.seat_capacity - event.available_seats
    if changes.get("seat_capacity", event.seat_capacity) < booked:
        raise CapacityBelowBooked(
            details=[{"field": "seatCapacity", "message": f"{booked} seats are already booked"}]
        )
    for field, value in changes.items():
        setattr(event, field, value)
    event.available_seats = event.seat_capacity - booked
    event.version += 1
    event.updated_at = datetime.now(UTC)
    session.flush()
    # Seats the change leaves free go to the waitlist in this transaction: nobody waits while
    # seats are free (``ebs check``). The promoted are told as a decider's batch is.
    promoted = procedures.promote_waitlist(session, event_id, api_worker_name())
    session.refresh(event)
    on_commit(session, lambda: publish_event_updated(publisher, event))
    if promoted:
        on_commit(session, lambda: publish_decisions(publisher, promoted))
        ends = {d.expires_at for d in promoted if d.expires_at is not None}
        if sender is not None and ends:
            # Without a timer the sweeper expires them, later.
            on_commit(session, lambda: schedule_expiry(sender, event_id, min(ends)))
        if kick_webhooks is not None:
            # Their webhook messages are in the outbox with them: send them now, not at the
            # sweeper's next run.
            endpoints = concerned(enabled_scopes(session), event_id)
            on_commit(session, lambda: [kick_webhooks(e) for e in endpoints])
    return event


def api_worker_name() -> str:
    """Who decided, in the audit log, when the API promotes: ``api:host:pid``."""
    return f"api:{socket.gethostname()}:{os.getpid()}"


def delete_event(session: Session, actor: User, event_id: int, publisher: redis.Redis) -> None:
    # Intake holds the event's arrival counter before its insert checks the event (the foreign
    # key): locked in that order here too, a request racing the delete is stored before it
    # (and refuses it) or finds the event gone, never a deadlock.
    session.execute(
        select(EventLine.event_id).where(EventLine.event_id == event_id).with_for_update()
    )
    event = get_event(session, event_id, for_update=True)
    if not can_manage(actor, event):
        raise Forbidden("Only an admin or the event's creator can delete it")
    held = session.scalar(
        select(
            exists().where(
                Booking.event_id == event_id,
                Booking.status.in_(("pending", "waitlisted", "held", "confirmed")),
            )
        )
    )
    if held:
        raise EventHasBookings()
    session.delete(event)
    session.flush()
    on_commit(session, lambda: publish_event_deleted(publisher, event_id))
