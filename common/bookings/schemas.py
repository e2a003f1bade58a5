from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, NamedTuple

from pydantic import Field

from common.schemas import Page, ReadSchema, WriteSchema

Status = Literal["pending", "waitlisted", "held", "confirmed", "rejected", "cancelled", "expired"]
Reason = Literal["sold_out", "limit_exceeded", "event_past", "capacity_lowered"]
MAX_QUANTITY = 1000


class EventFacts(NamedTuple):
    """What a request is refused by, read from an event's row: by an intake batch
    (``common.bookings.intake``), a seat snapshot's own read, or an admin's change message
    (``api.seats``)."""

    available: int
    version: int
    max_per_user: int
    starts_at: float  # epoch seconds
    # The most seats a request may ask for and be waitlisted: the capacity if the event has a
    # waitlist, else 0 (booking_verdict's rule).
    waitlist_up_to: int


class BookingCreate(WriteSchema):
    event_id: int = Field(ge=1, le=2**31 - 1)
    quantity: int = Field(default=1, ge=1, le=MAX_QUANTITY)


class BookingRead(ReadSchema):
    booking_id: str
    event_id: int
    user_id: int
    quantity: int
    status: Status
    reason: Reason | None
    created_at: datetime
    decided_at: datetime | None
    cancel_requested_at: datetime | None
    cancelled_at: datetime | None
    expires_at: datetime | None = Field(
        default=None,
        description="While held: when the hold ends unless confirmed (then expired); kept after",
    )
    queue_seq: int = Field(description="The request's number in its event's line (1, 2, 3, ...)")
    queue_position: int | None = Field(
        default=None,
        description="Its place in line while pending or waitlisted (1 = next), else null",
    )


class BookingPage(Page):
    """One page of bookings. ``next_cursor`` is the ``after`` of the next page (None on the last);
    ``total`` is counted only for a first page (no ``after``): later pages would pay a count
    over every booking of the event or user for a number the client already has."""

    bookings: list[BookingRead]
    total: int | None  # type: ignore[assignment]
    next_cursor: str | None = None


class BookingLogRead(ReadSchema):
    booking_id: str
    action: str
    details: dict[str, Any] | None
    timestamp: datetime


class Decision(ReadSchema):
    """One row of ``process_event_queue`` (or ``promote_waitlist``): what was decided for one
    request, with the event's seats and its line (common/bookings/line.py) after the batch."""

    booking_id: str
    user_id: int
    event_id: int
    quantity: int
    status: Status
    reason: Reason | None
    seats_left: int
    available_seats: int
    seat_capacity: int
    version: int
    created_at: datetime
    decided_at: datetime | None
    queue_seq: int
    queue_position: int | None  # the place in line of a request just waitlisted
    promoted: bool  # confirmed from the waitlist
    line_through: int
    line_gone: list[int]
    line_waiting: int  # the line's length
    waitlist_length: int
    expires_at: datetime | None = None  # a hold's end
