"""Holds: a booking accepted on an event with ``hold_seconds`` is ``held`` until ``expires_at``.

- Confirming (``confirm_hold``: the buyer, or a payment) turns ``held`` into ``confirmed`` in
  the API's transaction, under the booking's row lock and before ``expires_at`` by the
  database's clock; its seats are taken already, so the event row is not touched.
- Expiring is the decider's (``decide_expiries``, in the event's drain under its locks, in the
  transaction that gives the seats back and promotes the waitlist). The decider's write checks
  each row is still ``held`` (``apply_decisions``), so a confirmation and an expiry racing for
  one hold end it exactly once: whichever commits first, the other finds it gone.
- On time: a drain task with its ``eta`` at an end (``schedule_expiry``), sent once per (event,
  end) by ``set_timers``: after the batch that held seats commits if the end is within
  ``HOLD_TIMER_HORIZON``, else by the sweeper once it comes that near (``timer_ends``). A
  worker keeps an ``eta`` task unacknowledged until its time; the horizon keeps that well below
  the Redis broker's visibility timeout, which so keeps its default (docs/RELIABILITY.md). The
  sweeper also signals events whose holds outlived their end by ``SWEEP_PENDING_AFTER`` (a lost
  task, a dead worker, Redis lost).
- A warning, ``hold_expiring``, goes to the owner ``HOLD_WARNING_SECONDS`` before the end
  (``schedule_warning``, ``warn_holds``), sent with its end's timer.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.bookings.models import Booking, BookingLog
from common.channels import decisions_channel, hold_timer_key
from common.errors import AlreadyCancelled, BookingRejected, HoldExpired, NotHeld
from common.pubsub import encode, now_iso
from common.tasks import BOOKINGS_QUEUE, PROCESS_EVENT, WARN_HOLDS

# A timer fires this much after the hold's end: Celery's eta and PostgreSQL's now() read the
# same clock, but a task started a hair early would find nothing due yet.
TIMER_SLACK = timedelta(milliseconds=20)

# Ends are gathered into buckets this long, one timer per event and bucket: a live sale decides
# in many small batches, each with its own end, and a timer each cost about a quarter of the
# worker's time in a sale (docs/BENCHMARKS.md, "Holds"). A hold expires at most this late more.
TIMER_BUCKET = timedelta(milliseconds=250)

ConfirmedBy = Literal["buyer", "payment"]


class TaskSender(Protocol):
    def send_task(self, name: str, *args: Any, **kwargs: Any) -> object: ...


def confirm_hold(
    session: Session, booking: Booking, *, by: ConfirmedBy, payment_reference: str | None = None
) -> tuple[Booking, bool]:
    """Confirm ``booking`` (locked by the caller: ``get_booking(..., for_update=True)``).
    Returns it and whether this call confirmed it; confirming a confirmed booking changes
    nothing. ``HoldExpired`` once ``expires_at`` has passed (nothing changes: the decider
    expires it, if it has not yet), ``NotHeld`` while it is still in line."""
    if booking.status == "confirmed":
        return booking, False
    if booking.status == "expired":
        raise HoldExpired(details=[{"bookingId": booking.booking_id}])
    if booking.status == "cancelled" or booking.cancel_requested_at is not None:
        raise AlreadyCancelled()
    if booking.status == "rejected":
        raise BookingRejected("The booking was rejected: there is nothing to confirm")
    if booking.status != "held":
        raise NotHeld(details=[{"bookingId": booking.booking_id, "status": booking.status}])
    now = session.scalar(select(func.now()))
    assert now is not None and booking.expires_at is not None
    if booking.expires_at <= now:
        raise HoldExpired(
            details=[{"bookingId": booking.booking_id, "expiresAt": booking.expires_at.isoformat()}]
        )
    booking.status = "confirmed"
    details: dict[str, Any] = {"quantity": booking.quantity, "by": by}
    if payment_reference is not None:
        details["payment_reference"] = payment_reference
    session.add(
        BookingLog(
            booking_id=booking.booking_id,
            action="paid",
            user_id=booking.user_id,
            event_id=booking.event_id,
            details=details,
        )
    )
    session.flush()
    return booking, True


def confirmed_message(booking: Booking) -> dict[str, Any]:
    """The ``booking_status`` its owner hears when a hold is confirmed."""
    return {
        "bookingId": booking.booking_id,
        "eventId": booking.event_id,
        "status": booking.status,
        "reason": None,
        "quantity": booking.quantity,
        "decidedAt": booking.decided_at.isoformat() if booking.decided_at else None,
        "queueSeq": booking.queue_seq,
        "queuePosition": None,
        "promoted": False,
        "expiresAt": booking.expires_at.isoformat() if booking.expires_at else None,
        "timestamp": now_iso(),
        "userId": booking.user_id,
    }


def publish_statuses(client: redis.Redis, statuses: Sequence[dict[str, Any]]) -> None:
    """``booking_status`` messages for their owners (each with its ``userId``), through the
    decisions channel the API hands to waiters and sockets."""
    if statuses:
        client.publish(
            decisions_channel(), encode("booking_statuses", {"decisions": list(statuses)})
        )


def schedule_expiry(sender: TaskSender, event_id: int, expires_at: datetime) -> None:
    """A drain of the event at ``expires_at``: it expires what is due then."""
    sender.send_task(
        PROCESS_EVENT, args=[event_id], queue=BOOKINGS_QUEUE, eta=expires_at + TIMER_SLACK
    )


def schedule_warning(
    sender: TaskSender, event_id: int, expires_at: datetime, warn_before: float
) -> None:
    """``hold_expiring`` to the owners of the event's holds ending at ``expires_at``,
    ``warn_before`` seconds before; nothing if that moment has passed or warnings are off."""
    at = expires_at - timedelta(seconds=warn_before)
    if warn_before <= 0 or at <= datetime.now(UTC):
        return
    sender.send_task(
        WARN_HOLDS, args=[event_id, expires_at.isoformat()], queue=BOOKINGS_QUEUE, eta=at
    )


def set_timers(
    client: redis.Redis,
    sender: TaskSender,
    event_id: int,
    expires_at: datetime,
    *,
    horizon: float,
    warn_before: float,
) -> bool:
    """The expiry drain and the warning of the event's holds ending in ``expires_at``'s bucket
    (``TIMER_BUCKET``), at the bucket's end, once: not if that is further than ``horizon``
    seconds away (the sweeper sends it later), nor if they were sent already (a key that lives
    until just after the end). True if sent."""
    bucket = round(TIMER_BUCKET.total_seconds() * 1_000_000)
    end_us = -(-round(expires_at.timestamp() * 1_000_000) // bucket) * bucket
    expires_at = datetime.fromtimestamp(end_us / 1_000_000, UTC)
    left = (expires_at - datetime.now(UTC)).total_seconds()
    if left > horizon:
        return False
    key = hold_timer_key(event_id, end_us)
    if not client.set(key, "1", nx=True, ex=max(1, int(left) + 60)):
        return False
    try:
        schedule_expiry(sender, event_id, expires_at)
        schedule_warning(sender, event_id, expires_at, warn_before)
    except Exception:
        client.delete(key)  # the next sweep tries again
        raise
    return True


def timer_ends(session: Session, horizon: float) -> list[tuple[int, datetime]]:
    """(event, end) of the holds still held that end within ``horizon`` seconds: the sweeper's
    to hand to ``set_timers`` (those already sent are skipped there). Reads
    idx_bookings_held_expiry."""
    now = func.now()
    rows = session.execute(
        select(Booking.event_id, Booking.expires_at)
        .where(
            Booking.status == "held",
            Booking.expires_at > now,
            Booking.expires_at <= now + func.make_interval(0, 0, 0, 0, 0, 0, horizon),
        )
        .distinct()
    )
    return [(event_id, end) for event_id, end in rows if end is not None]


def warn_holds(session: Session, event_id: int, expires_at: datetime) -> list[dict[str, Any]]:
    """The ``hold_expiring`` messages for the event's holds ending in the bucket that ends at
    ``expires_at`` and still held (a confirmed or cancelled one is not warned)."""
    rows = session.scalars(
        select(Booking).where(
            Booking.event_id == event_id,
            Booking.status == "held",
            Booking.expires_at > expires_at - TIMER_BUCKET,
            Booking.expires_at <= expires_at,
            Booking.cancel_requested_at.is_(None),
        )
    )
    stamp = now_iso()
    return [
        {
            "bookingId": b.booking_id,
            "eventId": b.event_id,
            "status": "held",
            "warning": "hold_expiring",
            "quantity": b.quantity,
            "expiresAt": b.expires_at.isoformat() if b.expires_at else None,
            "timestamp": stamp,
            "userId": b.user_id,
        }
        for b in rows
    ]
