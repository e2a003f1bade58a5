"""What the organiser's page opens with (``GET /api/dashboard``): a page of events, and the one
in focus in detail. Sections are fields of ``DashboardFocus`` (docs/dashboard.md)."""

from __future__ import annotations

from datetime import datetime

from common.schemas import Page, ReadSchema


class LineRead(ReadSchema):
    """The event's line as a seat message carries it (docs/websockets.md), without ``gone``."""

    through: int
    waiting: int
    waitlisted: int
    arrived: int  # requests numbered so far: the difference over time is requests per second


class DashboardEvent(ReadSchema):
    id: int
    name: str
    event_date: datetime
    seat_capacity: int
    available_seats: int
    sold: int  # seat_capacity - available_seats: seats confirmed now
    version: int
    waitlist_enabled: bool
    line: LineRead


class SalesPoint(ReadSchema):
    at: datetime
    sold: int  # seats confirmed at ``at``, cancellations deducted


class DecisionBatch(ReadSchema):
    """One committed batch of the event's decisions (all share the decider's transaction time)."""

    at: datetime
    confirmed: int
    rejected: int
    cancelled: int


class HoldsRead(ReadSchema):
    """The event's holds at the read: outstanding, and those ending within ``soon_seconds``."""

    hold_seconds: int | None  # None: the event confirms at once and holds nothing
    bookings: int
    seats: int
    expiring_bookings: int
    expiring_seats: int
    soon_seconds: int
    next_expires_at: datetime | None


class EndpointHealth(ReadSchema):
    """One of the caller's webhook endpoints that hears this event (its own or all events)."""

    id: int
    url: str
    event_id: int | None  # None: every event of the caller
    enabled: bool
    disabled_reason: str | None
    delivered: int
    failed: int
    pending: int
    oldest_pending_at: datetime | None  # the queue's age is the read's time minus this


class DashboardFocus(ReadSchema):
    event: DashboardEvent
    sales: list[SalesPoint]  # oldest first; the last is the event's ``sold`` at its ``version``
    decisions: list[DecisionBatch]  # newest first
    holds: HoldsRead
    webhooks: list[EndpointHealth]


class DashboardRead(Page):
    events: list[DashboardEvent]
    focus: DashboardFocus | None
    read_at: datetime
