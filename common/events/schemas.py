from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from common.schemas import DateTimeText, Page, ReadSchema, WriteSchema, trimmed

MAX_CAPACITY = 1_000_000
MAX_HOLD_SECONDS = 7 * 24 * 3600  # a week

EventName = Annotated[str, Field(min_length=1, max_length=255), trimmed(1)]
Venue = Annotated[str, Field(max_length=255), trimmed()]
Description = Annotated[str, Field(max_length=10_000), trimmed()]


def _in_future(value: datetime | None) -> datetime | None:
    if value is None:
        return value
    try:
        # Stored and read back in UTC: `9999-12-31T23:59:59-14:00` is year 10000 there, which
        # Python's datetime cannot hold.
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("must be before the year 10000 in UTC") from None
    if value <= datetime.now(UTC):
        raise ValueError("must be in the future")
    return value


class EventCreate(WriteSchema):
    name: EventName
    description: Description | None = None
    venue: Venue | None = None
    event_date: DateTimeText
    seat_capacity: int = Field(ge=1, le=MAX_CAPACITY)
    max_seats_per_user: int = Field(default=10, ge=1, le=MAX_CAPACITY)
    image_url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://\S+$")
    # A request the event cannot seat is waitlisted instead of refused (docs/API.md).
    waitlist_enabled: bool = False
    # Accepted requests are held this long for payment, then expire; None confirms at once.
    hold_seconds: int | None = Field(default=None, ge=1, le=MAX_HOLD_SECONDS)

    _future = field_validator("event_date")(_in_future)


class EventUpdate(WriteSchema):
    name: EventName | None = None
    description: Description | None = None
    venue: Venue | None = None
    event_date: DateTimeText | None = None
    seat_capacity: int | None = Field(default=None, ge=1, le=MAX_CAPACITY)
    max_seats_per_user: int | None = Field(default=None, ge=1, le=MAX_CAPACITY)
    image_url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://\S+$")
    waitlist_enabled: bool | None = None
    hold_seconds: int | None = Field(default=None, ge=1, le=MAX_HOLD_SECONDS)

    _future = field_validator("event_date")(_in_future)

    @model_validator(mode="after")
    def _not_null(self) -> EventUpdate:
        for field in (
            "name",
            "event_date",
            "seat_capacity",
            "max_seats_per_user",
            "waitlist_enabled",
        ):
            if field in self.model_fields_set and getattr(self, field) is None:
                raise ValueError(f"{field} cannot be null")
        return self


class EventRead(ReadSchema):
    id: int
    name: str
    description: str | None
    venue: str | None
    event_date: datetime
    seat_capacity: int
    available_seats: int
    max_seats_per_user: int
    version: int
    image_url: str | None
    created_by: int | None
    waitlist_enabled: bool
    waitlist_length: int  # requests waitlisted now
    hold_seconds: int | None = None
    created_at: datetime
    updated_at: datetime


class EventPage(Page):
    events: list[EventRead]


class SeatSnapshot(ReadSchema):
    event_id: int
    available_seats: int
    seat_capacity: int
    version: int
