"""Payment callbacks: a payment integration tells us a booking was paid, signed the Standard
Webhooks way with the deployment's shared secret (``PAYMENT_WEBHOOK_SECRET``).

- ``verify`` refuses a callback whose ``webhook-timestamp`` is further than
  ``PAYMENT_WEBHOOK_TOLERANCE`` from now (``PaymentTimestampStale``: a replay of an old
  message) or whose signature does not verify (``PaymentSignatureInvalid``).
- ``record_payment`` is idempotent by ``webhook-id``: the first delivery decides and is kept
  (``payment_callbacks``), a redelivery gets the same answer and changes nothing. A payment
  for a hold still in time confirms it (the buyer's ``confirm_hold``, audit ``paid`` with the
  payment reference); one for a hold that expired, a cancelled, rejected or unknown booking is
  kept as ``refund_required``: recorded, answered clearly, never lost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select, text
from sqlalchemy.orm import Session
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from common.bookings import holds
from common.bookings.models import Booking
from common.bookings.schemas import BookingRead
from common.errors import (
    HoldExpired,
    PaymentSignatureInvalid,
    PaymentTimestampStale,
    ValidationFailed,
)
from common.payments.models import PaymentCallback
from common.payments.schemas import PaymentCallbackBody, PaymentCallbackRead

# Payment callbacks of one webhook-id take turns ('EBSY'), so two deliveries racing decide once.
CALLBACK_LOCK_CLASS = 1162957657
# What a booking that cannot take the payment owes the payer, by its status.
REFUND_REASONS = {
    "expired": "hold_expired",
    "cancelled": "booking_cancelled",
    "rejected": "booking_rejected",
    "pending": "not_held",
    "waitlisted": "not_held",
}
NO_AUTH_HEADER: dict[str, Any] = {"headers": {}}  # no Bearer token, so no challenge


def verify(
    secret: str, tolerance: int, body: bytes, headers: Mapping[str, str], now: float | None = None
) -> tuple[str, PaymentCallbackBody]:
    """The callback's ``webhook-id`` and body, once its timestamp and signature pass."""
    lowered = {k.lower(): v for k, v in headers.items()}
    webhook_id = lowered.get("webhook-id", "")
    stamp = lowered.get("webhook-timestamp", "")
    if not webhook_id or not lowered.get("webhook-signature") or not stamp.isdigit():
        raise PaymentSignatureInvalid(
            "Missing or malformed Standard Webhooks headers", **NO_AUTH_HEADER
        )
    if len(webhook_id) > 255:
        raise PaymentSignatureInvalid("webhook-id is longer than 255 characters", **NO_AUTH_HEADER)
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance:
        raise PaymentTimestampStale(**NO_AUTH_HEADER)
    try:
        Webhook(secret).verify(body, dict(lowered), json_parse=False)
    except WebhookVerificationError as exc:
        # The library's own window (5 minutes) is never narrower than ours (le=300).
        raise PaymentSignatureInvalid(**NO_AUTH_HEADER) from exc
    try:
        parsed = PaymentCallbackBody.model_validate(json.loads(body))
    except (ValueError, ValidationError) as exc:
        raise ValidationFailed(
            "The payment callback's body is not {bookingId, paymentReference}"
        ) from exc
    return webhook_id, parsed


def record_payment(
    session: Session, webhook_id: str, body: PaymentCallbackBody
) -> tuple[PaymentCallbackRead, Booking | None]:
    """Decide the callback once; returns the answer and the booking it confirmed (else None)."""
    session.execute(
        text("SELECT pg_advisory_xact_lock(:cls, hashtext(:id))"),
        {"cls": CALLBACK_LOCK_CLASS, "id": webhook_id},
    )
    seen = session.get(PaymentCallback, webhook_id)
    if seen is not None:
        return _answer(session, seen, replayed=True), None
    booking = session.execute(
        select(Booking).where(Booking.booking_id == body.booking_id).with_for_update()
    ).scalar_one_or_none()
    outcome, reason, confirmed = _decide(session, booking, body.payment_reference)
    record = PaymentCallback(
        webhook_id=webhook_id,
        booking_id=body.booking_id,
        payment_reference=body.payment_reference,
        outcome=outcome,
        reason=reason,
    )
    session.add(record)
    session.flush()
    return _answer(session, record, replayed=False), booking if confirmed else None


def _decide(
    session: Session, booking: Booking | None, reference: str
) -> tuple[str, str | None, bool]:
    if booking is None:
        return "refund_required", "unknown_booking", False
    if booking.status == "cancelled" or booking.cancel_requested_at is not None:
        return "refund_required", "booking_cancelled", False
    if booking.status == "confirmed":
        return "already_confirmed", None, False
    if booking.status == "held":
        try:
            holds.confirm_hold(session, booking, by="payment", payment_reference=reference)
        except HoldExpired:
            return "refund_required", "hold_expired", False
        return "confirmed", None, True
    return "refund_required", REFUND_REASONS.get(booking.status, "not_held"), False


def _answer(session: Session, record: PaymentCallback, *, replayed: bool) -> PaymentCallbackRead:
    booking = session.scalar(select(Booking).where(Booking.booking_id == record.booking_id))
    return PaymentCallbackRead(
        webhook_id=record.webhook_id,
        booking_id=record.booking_id,
        payment_reference=record.payment_reference,
        outcome=record.outcome,
        reason=record.reason,
        replayed=replayed,
        booking=BookingRead.model_validate(booking) if booking is not None else None,
    )


def refunds_due(session: Session) -> list[dict[str, Any]]:
    """Recorded payments to give back, oldest first (idx_payment_callbacks_refund)."""
    rows = session.scalars(
        select(PaymentCallback)
        .where(PaymentCallback.outcome == "refund_required")
        .order_by(PaymentCallback.received_at)
    )
    return [
        {"webhookId": r.webhook_id, "bookingId": r.booking_id, "reference": r.payment_reference,
         "reason": r.reason, "receivedAt": r.received_at.isoformat()}
        for r in rows
    ]  # fmt: skip
