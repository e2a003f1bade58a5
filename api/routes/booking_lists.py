"""Booking lists: the caller's bookings, and an event's for its managers (a JSON page, or every
booking as CSV). Pages by keyset (``after``, docs/API.md)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from api.deps import CurrentUser, SessionDep, SessionFactoryDep
from api.envelope import Envelope, error_responses, ok
from common.bookings import reads
from common.bookings.models import Booking
from common.bookings.schemas import BookingPage, Status

router = APIRouter(prefix="/api/bookings", tags=["bookings"])


# Keyset pagination (docs/API.md): ``after`` is the ``nextCursor`` of the previous page.
AfterQuery = Annotated[str | None, Query(min_length=1, max_length=50)]


@router.get("/user/me", response_model=Envelope[BookingPage], responses=error_responses(400, 401))
def my_bookings(
    session: SessionDep,
    user: CurrentUser,
    status_filter: Annotated[Status | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,  # an OFFSET past bigint fails in SQL
    after: AfterQuery = None,
) -> dict:
    """The caller's bookings, newest first."""
    page = reads.list_user_bookings(
        session, user, status=status_filter, limit=limit, offset=offset, after=after
    )
    return ok(_page(page))


def _page(page: reads.PageOf) -> BookingPage:
    return BookingPage(
        bookings=page.rows,
        total=page.total,
        has_more=page.next_cursor is not None,
        next_cursor=page.next_cursor,
    )


CSV_COLUMNS = [
    "booking_id",
    "user_id",
    "event_id",
    "quantity",
    "status",
    "reason",
    "created_at",
    "decided_at",
    "cancelled_at",
    "queue_seq",
    "queue_position",
]


@router.get(
    "/admin/events/{event_id}",
    response_model=Envelope[BookingPage],
    responses={
        200: {"content": {"text/csv": {}}, "description": "JSON page, or CSV of every booking"},
        **error_responses(400, 401, 403, 404),
    },
)
def event_bookings(
    event_id: int,
    request: Request,
    session: SessionDep,
    factory: SessionFactoryDep,
    user: CurrentUser,
    status_filter: Annotated[Status | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,  # an OFFSET past bigint fails in SQL
    after: AfterQuery = None,
) -> Any:
    """An event's bookings in arrival order, for admins and the event's creator.
    With ``Accept: text/csv``, every booking of the event as CSV (paging ignored), streamed
    from a server-side cursor."""
    if "text/csv" in request.headers.get("accept", ""):
        # Checked here, so a refusal is a 4xx before the stream starts.
        query = reads.event_bookings_query(session, user, event_id, status_filter)
        return StreamingResponse(
            _csv(reads.stream_bookings(factory, query)),
            media_type="text/csv",
            headers={
                "Content-Disposition": f'attachment; filename="event-{event_id}-bookings.csv"'
            },
        )
    page = reads.list_event_bookings(
        session, user, event_id, status=status_filter, limit=limit, offset=offset, after=after
    )
    return ok(_page(page))


def _csv(rows: Iterable[Booking]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(["" if (v := getattr(row, c)) is None else v for c in CSV_COLUMNS])
        if buffer.tell() > 64_000:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
