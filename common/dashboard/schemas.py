"""What the organiser's page opens with (``GET /api/dashboard``): a page of events, and the one
in focus in detail. Sections are fields of ``DashboardFocus``; holds and webhook deliveries join
it as fields of their own once they exist (docs/dashboard.md)."""

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


class DashboardFocus(ReadSchema):
    event: DashboardEvent
    sales: list[SalesPoint]  # oldest first; the last is the event's ``sold`` at its ``version``
    decisions: list[DecisionBatch]  # newest first


class DashboardRead(Page):
    events: list[DashboardEvent]
    focus: DashboardFocus | None
    read_at: datetime
