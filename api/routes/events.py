from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from api.deps import CurrentUser, RedisDep, SessionDep, TaskSenderDep
from api.envelope import Envelope, error_responses, ok
from api.routes.webhooks import KickDep
from common.events import service
from common.events.schemas import EventCreate, EventPage, EventRead, EventUpdate

router = APIRouter(prefix="/api/events", tags=["events"])


@router.get("", response_model=Envelope[EventPage], responses=error_responses(400))
def list_events(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    upcoming: bool = False,
    q: Annotated[str | None, Query(max_length=255)] = None,
) -> dict:
    """Public list, soonest first; ``upcoming=true`` hides events that have started."""
    events, total = service.list_events(session, limit=limit, offset=offset, upcoming=upcoming, q=q)
    return ok(EventPage(events=events, total=total, has_more=offset + len(events) < total))


@router.get("/{event_id}", response_model=Envelope[EventRead], responses=error_responses(400, 404))
def get_event(event_id: int, session: SessionDep) -> dict:
    return ok(EventRead.model_validate(service.get_event(session, event_id)))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=Envelope[EventRead],
    responses=error_responses(400, 401, 403, 413),
)
def create_event(body: EventCreate, session: SessionDep, user: CurrentUser) -> dict:
    """Admins only."""
    return ok(EventRead.model_validate(service.create_event(session, user, body)))


@router.put(
    "/{event_id}",
    response_model=Envelope[EventRead],
    responses=error_responses(400, 401, 403, 404, 409, 413),
)
def update_event(
    event_id: int,
    body: EventUpdate,
    session: SessionDep,
    user: CurrentUser,
    publisher: RedisDep,
    sender: TaskSenderDep,
    kick: KickDep,
) -> dict:
    """Admin or creator; not once the event has started. Capacity never drops below the seats
    already confirmed or held; available seats are recomputed from it."""
    event = service.update_event(session, user, event_id, body, publisher, sender, kick)
    return ok(EventRead.model_validate(event))


@router.delete(
    "/{event_id}",
    response_model=Envelope[dict],
    responses=error_responses(400, 401, 403, 404, 409),
)
def delete_event(
    event_id: int, session: SessionDep, user: CurrentUser, publisher: RedisDep
) -> dict:
    """Admin or creator; refused while the event has confirmed, pending or waitlisted bookings."""
    service.delete_event(session, user, event_id, publisher)
    return ok({"id": event_id, "deleted": True})
