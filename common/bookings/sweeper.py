"""What the sweeper looks for: events whose drain, signal or timer was lost."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.bookings import procedures
from common.bookings.models import Booking
from common.events.models import Event


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
