from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from common.bookings.schemas import BookingRead
from common.schemas import ReadSchema

Outcome = Literal["confirmed", "already_confirmed", "refund_required"]
RefundReason = Literal[
    "unknown_booking", "hold_expired", "booking_cancelled", "booking_rejected", "not_held"
]


class PaymentCallbackBody(BaseModel):
    """What a payment integration posts: the booking paid for and its payment's reference.
    Fields we do not know are ignored: a provider's adapter may pass more along."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=False, extra="ignore")

    booking_id: str = Field(min_length=1, max_length=50)
    payment_reference: str = Field(min_length=1, max_length=255)


class PaymentCallbackRead(ReadSchema):
    """What the callback did: ``confirmed`` (the hold is now a confirmed booking),
    ``already_confirmed`` (nothing changed), or ``refund_required`` with its ``reason`` (the
    payment is recorded and must be given back). A redelivery of one ``webhook-id`` gets the
    answer its first delivery got, with ``replayed`` true."""

    webhook_id: str
    booking_id: str
    payment_reference: str
    outcome: Outcome
    reason: RefundReason | None = None
    replayed: bool = False
    booking: BookingRead | None = None
