"""The organiser's view of their events: one read for the page's first paint; the WebSocket's
seat messages keep it current afterwards (docs/dashboard.md).

Errors: ``Forbidden`` (403) for an event the actor neither administers nor created,
``EventNotFound`` (404).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Select, func, select, text
from sqlalchemy.orm import Session

from common.dashboard.schemas import (
    DashboardEvent,
    DashboardFocus,
    DashboardRead,
    DecisionBatch,
    EndpointHealth,
    HoldsRead,
    LineRead,
    SalesPoint,
)
from common.errors import Forbidden
from common.events import service as events_service
from common.events.models import Event, EventLine
from common.users.models import User

# A chart wider than a screen in pixels draws nothing more; a long sale is thinned to this.
MAX_SALES_POINTS = 400
RECENT_BATCHES = 20
# "Expiring soon" on the page: the holds whose end falls within this of the read.
HOLDS_SOON_SECONDS = 60
WEBHOOK_ENDPOINTS = 20

# Per instant, the seats a committed transaction confirmed (+) or gave back (-). A batch's rows
# share its transaction time (now() in the decider), so grouping by it gives the batches. A
# cancelled booking was confirmed first exactly when it was decided before it was cancelled: a
# request cancelled while it waited gets decided_at = cancelled_at (cancel_booking, the decider).
SALES_SQL = text(
    """
    SELECT at, sum(delta)::bigint FROM (
        SELECT decided_at AS at, quantity AS delta FROM bookings
        WHERE event_id = :event_id AND decided_at IS NOT NULL
          AND (status = 'confirmed' OR (status = 'cancelled' AND decided_at < cancelled_at))
        UNION ALL
        SELECT cancelled_at, -quantity FROM bookings
        WHERE event_id = :event_id AND status = 'cancelled' AND decided_at < cancelled_at
    ) d GROUP BY at ORDER BY at
    """
)

BATCHES_SQL = text(
    """
    SELECT at, count(*) FILTER (WHERE kind = 'confirmed'),
           count(*) FILTER (WHERE kind = 'rejected'), count(*) FILTER (WHERE kind = 'cancelled')
    FROM (
        SELECT decided_at AS at,
               CASE WHEN status = 'rejected' THEN 'rejected' ELSE 'confirmed' END AS kind
        FROM bookings
        WHERE event_id = :event_id AND decided_at IS NOT NULL
          AND (status IN ('confirmed', 'rejected')
               OR (status = 'cancelled' AND decided_at < cancelled_at))
        UNION ALL
        SELECT cancelled_at, 'cancelled' FROM bookings
        WHERE event_id = :event_id AND status = 'cancelled'
    ) d GROUP BY at ORDER BY at DESC LIMIT :limit
    """
)


# Through idx_bookings_held_expiry: only the event's held rows are read.
HOLDS_SQL = text(
    """
    SELECT count(*), coalesce(sum(quantity), 0),
           count(*) FILTER (WHERE soon), coalesce(sum(quantity) FILTER (WHERE soon), 0),
           min(expires_at)
    FROM (SELECT quantity, expires_at,
                 expires_at <= now() + make_interval(secs => :soon) AS soon
          FROM bookings WHERE event_id = :event_id AND status = 'held') h
    """
)

# The caller's endpoints that hear this event, with their outbox counted per state (through
# idx_webhook_messages_endpoint_id_id; the oldest pending one through idx_webhook_messages_pending).
WEBHOOKS_SQL = text(
    """
    SELECT e.id, e.url, e.event_id, e.enabled, e.disabled_reason,
           count(m.id) FILTER (WHERE m.state = 'delivered'),
           count(m.id) FILTER (WHERE m.state = 'failed'),
           count(m.id) FILTER (WHERE m.state = 'pending'),
           min(m.created_at) FILTER (WHERE m.state = 'pending')
    FROM webhook_endpoints e LEFT JOIN webhook_messages m ON m.endpoint_id = e.id
    WHERE e.owner_id = :owner_id AND (e.event_id IS NULL OR e.event_id = :event_id)
    GROUP BY e.id ORDER BY e.enabled, e.id LIMIT :limit
    """
)


def holds(session: Session, event: Event) -> HoldsRead:
    row = session.execute(HOLDS_SQL, {"event_id": event.id, "soon": HOLDS_SOON_SECONDS}).one()
    return HoldsRead(
        hold_seconds=event.hold_seconds,
        bookings=row[0],
        seats=row[1],
        expiring_bookings=row[2],
        expiring_seats=row[3],
        soon_seconds=HOLDS_SOON_SECONDS,
        next_expires_at=row[4],
    )


def webhook_health(session: Session, actor: User, event_id: int) -> list[EndpointHealth]:
    rows = session.execute(
        WEBHOOKS_SQL, {"owner_id": actor.id, "event_id": event_id, "limit": WEBHOOK_ENDPOINTS}
    )
    return [
        EndpointHealth(
            id=r[0],
            url=r[1],
            event_id=r[2],
            enabled=r[3],
            disabled_reason=r[4],
            delivered=r[5],
            failed=r[6],
            pending=r[7],
            oldest_pending_at=r[8],
        )
        for r in rows
    ]


def _visible(actor: User) -> Select:
    query = select(Event, EventLine.arrived).outerjoin(EventLine, EventLine.event_id == Event.id)
    if not actor.is_admin:
        query = query.where(Event.created_by == actor.id)
    return query


def _summary(event: Event, arrived: int | None) -> DashboardEvent:
    gone = len(event.line_gone)
    arrived = max(arrived or 0, event.line_through + gone)
    return DashboardEvent(
        id=event.id,
        name=event.name,
        event_date=event.event_date,
        seat_capacity=event.seat_capacity,
        available_seats=event.available_seats,
        sold=event.seat_capacity - event.available_seats,
        version=event.version,
        waitlist_enabled=event.waitlist_enabled,
        line=LineRead(
            through=event.line_through,
            waiting=arrived - event.line_through - gone,
            waitlisted=event.waitlist_length,
            arrived=arrived,
        ),
    )


def thin(points: list[tuple[datetime, int]], limit: int) -> list[tuple[datetime, int]]:
    """At most ``limit`` points, keeping the last of each run and always the last point: the
    chart's last value stays the true one."""
    if len(points) <= limit:
        return points
    step = len(points) / limit
    kept = [points[min(len(points) - 1, int((i + 1) * step) - 1)] for i in range(limit)]
    kept[-1] = points[-1]
    return kept


def sales(session: Session, event: Event) -> list[SalesPoint]:
    total, points = 0, []
    for at, delta in session.execute(SALES_SQL, {"event_id": event.id}):
        total += delta
        points.append((at, total))
    return [SalesPoint(at=at, sold=sold) for at, sold in thin(points, MAX_SALES_POINTS)]


def recent_batches(session: Session, event_id: int) -> list[DecisionBatch]:
    rows = session.execute(BATCHES_SQL, {"event_id": event_id, "limit": RECENT_BATCHES})
    return [DecisionBatch(at=at, confirmed=c, rejected=r, cancelled=x) for at, c, r, x in rows]


def focus(session: Session, actor: User, event_id: int) -> DashboardFocus:
    event = events_service.get_event(session, event_id)
    if not events_service.can_manage(actor, event):
        raise Forbidden("Only an admin or the event's creator can watch its sale")
    arrived = session.scalar(select(EventLine.arrived).where(EventLine.event_id == event_id))
    return DashboardFocus(
        event=_summary(event, arrived),
        sales=sales(session, event),
        decisions=recent_batches(session, event_id),
        holds=holds(session, event),
        webhooks=webhook_health(session, actor, event_id),
    )


def dashboard(
    session: Session,
    actor: User,
    *,
    q: str | None,
    limit: int,
    offset: int,
    focus_id: int | None,
) -> DashboardRead:
    """A page of the actor's events, soonest first (like ``GET /api/events``), and the focused
    event in detail: ``focus_id``, or else the page's first event."""
    read_at = session.scalar(select(func.now()))
    query = _visible(actor)
    if q:
        escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Event.name.ilike(f"%{escaped}%", escape="\\"))
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.execute(query.order_by(Event.event_date, Event.id).limit(limit).offset(offset))
    events = [_summary(event, arrived) for event, arrived in rows]
    if focus_id is None and events:
        focus_id = events[0].id
    return DashboardRead(
        events=events,
        total=total,
        has_more=offset + len(events) < total,
        focus=focus(session, actor, focus_id) if focus_id is not None else None,
        read_at=read_at,
    )
