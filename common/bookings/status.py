"""What a booking's status means to someone waiting on it.

A booking moves pending -> confirmed | rejected | waitlisted (or held instead of confirmed, on an
event with ``holdSeconds``; held -> confirmed by the buyer or a payment, or expired at its
``expiresAt``), waitlisted -> confirmed (promoted
when seats come back) | rejected (``event_past``, at the start), and pending, waitlisted, held or
confirmed -> cancelled after a cancellation request (``cancel_requested_at``) that a worker
carries out. ``is_settled`` says nothing is left for a worker to do; ``apply_decision`` reads a
``booking_status`` message (the other side of ``common.bookings.messages.status_message``) into
the booking it is about.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from common.bookings.models import Booking


def is_settled(booking: Booking) -> bool:
    """Nothing is in flight for the booking: decided, or waitlisted (nothing for a worker to do
    until seats come back), and no cancellation awaiting a worker."""
    if booking.status in ("rejected", "cancelled"):
        return True
    if booking.status == "expired":
        return True
    waiting = booking.status in ("confirmed", "held", "waitlisted")
    return waiting and booking.cancel_requested_at is None


def apply_decision(booking: Booking, message: dict[str, Any]) -> Booking:
    """The booking as just inserted, with the decision the worker published for it (a
    waitlisted one with its place in line, and no decision time yet)."""
    booking.status = message["status"]
    booking.reason = message.get("reason")
    if "queueSeq" in message:
        booking.queue_seq = message["queueSeq"]
    booking.queue_position = message.get("queuePosition")
    decided_at = message.get("decidedAt")
    if decided_at is None and booking.status != "waitlisted":
        decided_at = message.get("timestamp")
    booking.decided_at = datetime.fromisoformat(decided_at) if decided_at else None
    expires_at = message.get("expiresAt")
    booking.expires_at = datetime.fromisoformat(expires_at) if expires_at else booking.expires_at
    return booking
