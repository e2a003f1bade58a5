"""What a webhook says: its types, its payload (built from the decision's audit row) and its
Standard Webhooks headers, signed with ``standardwebhooks``.

A message's ``webhook-id`` is ``msg_<audit row id>``: the same for every attempt and redelivery
of that decision (a receiver deduplicates by it), and for every endpoint that gets it.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from standardwebhooks import Webhook

# Every audit action ``a`` of booking_logs becomes the type ``booking.<a>`` (the trigger
# write_webhook_outbox); an endpoint may subscribe to the types listed here. A new decision
# is one more line.
EVENT_TYPES = (
    "booking.confirmed",
    "booking.held",
    "booking.paid",
    "booking.expired",
    "booking.waitlisted",
    "booking.promoted",
    "booking.rejected",
    "booking.cancelled",
)
# The status a booking has after each action, where the action's name is not the status.
STATUS_AFTER = {"promoted": "confirmed", "paid": "confirmed"}
# Audit details a receiver gets, camelCased; the rest (worker, batch size) is ours.
DETAILS = {
    "quantity": "quantity",
    "reason": "reason",
    "seats_remaining": "seatsRemaining",
    "queue_position": "queuePosition",
    "expires_at": "expiresAt",
    "payment_reference": "paymentReference",
}
SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A signing secret as Standard Webhooks writes them: ``whsec_`` and 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(24)).decode()


def message_id(log_id: int) -> str:
    return f"msg_{log_id}"


def payload(
    *, log_id: int, booking_id: str, action: str, user_id: int | None, event_id: int | None,
    details: Mapping[str, Any] | None, timestamp: datetime,
) -> bytes:  # fmt: skip
    """The body: ``type``, ``timestamp`` (of the decision) and ``data``, as compact JSON with
    sorted keys, so a redelivery sends the same bytes. ``data.version`` is the audit row's id,
    which grows with each change of one booking: a receiver drops a message whose version is
    below the one it holds for that booking."""
    data: dict[str, Any] = {
        "bookingId": booking_id,
        "eventId": event_id,
        "userId": user_id,
        "status": _status_after(action, details),
        "version": log_id,
    }
    for key, name in DETAILS.items():
        if details and details.get(key) is not None:
            data[name] = details[key]
    body = {"type": f"booking.{action}", "timestamp": timestamp.isoformat(), "data": data}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _status_after(action: str, details: Mapping[str, Any] | None) -> str:
    """A promotion on an event with holds is a hold: its details carry the hold's end."""
    if action == "promoted" and details and details.get("expires_at"):
        return "held"
    return STATUS_AFTER.get(action, action)


def signers(secrets: Sequence[str]) -> list[Webhook]:
    """One ``standardwebhooks`` signer per secret, made once per batch (each decodes its key)."""
    return [Webhook(s) for s in secrets]


def headers(
    msg_id: str, body: bytes, signers: Sequence[Webhook], now: datetime
) -> dict[str, str]:  # fmt: skip
    """The Standard Webhooks headers, with one signature per secret (the current one first,
    then the previous one during its grace period), so a receiver holding either verifies."""
    signatures = " ".join(w.sign(msg_id, now, body) for w in signers)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signatures,
        "content-type": "application/json",
    }
