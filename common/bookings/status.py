"""What a booking's status means to someone waiting on it.

A booking moves pending -> confirmed | rejected | waitlisted, waitlisted -> confirmed (promoted
when seats come back) | rejected (the event started), and confirmed or waitlisted -> cancelled
after a cancellation request (``cancel_requested_at``) that a worker carries out.
``is_settled`` says nothing is left for a worker to do (a waitlisted request waits for seats,
not for a worker); ``apply_decision`` reads a ``booking_status`` message (the other side of
``common.bookings.messages.status_message``) into the booking it is about.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from common.bookings.models import IN_LINE, Booking


def is_settled(booking: Booking) -> bool:
    """Nothing is in flight for the booking: decided, and no cancellation awaiting a worker."""
    if booking.status in ("rejected", "cancelled"):
        return True
    return booking.status in ("confirmed", "waitlisted") and booking.cancel_requested_at is None


def apply_decision(booking: Booking, message: dict[str, Any]) -> Booking:
    """The booking as just inserted, with the decision the worker published for it."""
    booking.status = message["status"]
    booking.reason = message.get("reason")
    decided_at = message.get("decidedAt")
    if booking.status not in IN_LINE:  # a waitlisted request is decided when it leaves the line
        decided_at = decided_at or message.get("timestamp")
    booking.decided_at = datetime.fromisoformat(decided_at) if decided_at else None
    booking.queue_seq = message.get("queueSeq", booking.queue_seq)
    booking.queue_position = message.get("queuePosition")
    return booking
