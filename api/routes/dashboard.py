"""The organiser's page opens with one read (``GET /api/dashboard``), then follows the WebSocket."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import CurrentUser, SessionDep
from api.envelope import Envelope, error_responses, ok
from common.dashboard import service
from common.dashboard.schemas import DashboardRead

router = APIRouter(prefix="/api/dashboard", tags=["dashboard"])


@router.get(
    "", response_model=Envelope[DashboardRead], responses=error_responses(400, 401, 403, 404)
)
def read_dashboard(
    session: SessionDep,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=20)] = 10,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    q: Annotated[str | None, Query(max_length=255)] = None,
    focus: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> dict:
    """The events the caller may watch (all for an admin, their own for a creator), soonest
    first, a page at a time (at most 20: one socket follows up to ``WS_MAX_SUBSCRIPTIONS``
    events), and one event in detail (``focus``, else the page's first): its sales over time
    and its recent decision batches."""
    return ok(service.dashboard(session, user, q=q, limit=limit, offset=offset, focus_id=focus))
