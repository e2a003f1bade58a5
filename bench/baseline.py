"""The synchronous design this service replaced, kept only as a benchmark baseline.

The product does not carry it: the bench serves ``create_app`` below (``bench/main.py``), the
product's app with this route added, on the same lean HTTP layer as the queued intake, and
installs the procedure the route calls (``bench/create_booking.sql``, ``install``) into the bench
database after the migrations. The request books by itself, as the original did: a cheap
unlocked check of the event first (unknown, started, sold out, quantity above the limit), then
one call of the single-booking procedure ``bench.create_booking``, which takes the event row
lock, and one transaction per booking. It answers 201 or 409 at once.

It is written to be as fast as that design can be, so the benchmark compares designs, not a
straw man: the same pool and the same token check as the queued intake, the user looked up in
the same round trip as the unlocked check, one round trip for the procedure, and the lock held
only until the commit.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, status
from fastapi.responses import JSONResponse
from sqlalchemy import Connection, func, literal_column, select, text
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api import app as product
from api.deps import SessionFactoryDep, TokenUserId
from api.envelope import Envelope, error_responses, ok
from api.lean_path import App
from common.bookings.schemas import BookingCreate, BookingRead
from common.bookings.service import new_booking_id
from common.db import session_scope
from common.errors import (
    REJECTIONS,
    DomainError,
    EventNotFound,
    EventPast,
    InvalidToken,
    SoldOut,
    ValidationFailed,
)
from common.events.models import Event
from common.settings import Settings
from common.users import service as users_service
from common.users.models import User

SQL = Path(__file__).with_name("create_booking.sql")
ROUTE = "/api/bench/bookings-sync"
router = APIRouter(prefix="/api/bench", tags=["benchmark"])


def install(conn: Connection) -> None:
    """Install the baseline's procedure (``bench.create_booking``) in ``conn``'s database,
    migrated to head; run again, it replaces it."""
    conn.exec_driver_sql(SQL.read_text())


def create_booking(
    session: Session, user_id: int, event_id: int, booking_id: str, quantity: int
) -> str:
    """The synchronous single-booking procedure: 'confirmed' or the rejection reason."""
    return session.execute(
        text("SELECT bench.create_booking(:user_id, :event_id, :booking_id, :quantity)"),
        {"user_id": user_id, "event_id": event_id, "booking_id": booking_id, "quantity": quantity},
    ).scalar_one()


# create_booking also answers "not_found" for an event deleted meanwhile.
OUTCOMES: dict[str, type[DomainError]] = {**REJECTIONS, "not_found": EventNotFound}


def book_synchronously(
    factory: sessionmaker[Session], user_id: int, body: BookingCreate
) -> BookingRead:
    """Check without a lock, then book under the event row lock; commit before returning."""
    booking_id = new_booking_id()
    with session_scope(factory) as session:
        # The token's user and the event in one round trip, as the queued intake does, and the
        # verdict the booking rules (booking_verdict, in SQL) give without the lock.
        user_exists = select(User.id).where(User.id == user_id).exists()
        rules = func.booking_verdict(
            literal_column("events"), body.quantity, Event.available_seats, 0
        )
        row = session.execute(
            select(rules, Event.max_seats_per_user, user_exists).where(Event.id == body.event_id)
        ).one_or_none()
        if row is None:
            users_service.get_active(session, user_id)  # a deleted user is told so first
            raise EventNotFound()
        verdict, max_per_user, known_user = row
        if not known_user:
            raise InvalidToken()
        if verdict == "event_past":
            raise EventPast()
        if body.quantity > max_per_user:
            raise ValidationFailed(
                details=[{"field": "quantity", "message": f"at most {max_per_user} seats per user"}]
            )
        if verdict == "sold_out":
            # Most of a flash sale ends here, without touching the lock.
            raise SoldOut()
        outcome = create_booking(session, user_id, body.event_id, booking_id, body.quantity)
    # The rejected row the procedure wrote is committed before the 409 goes out.
    if outcome != "confirmed":
        raise OUTCOMES.get(outcome, SoldOut)(details=[{"bookingId": booking_id}])
    now = datetime.now(UTC)
    return BookingRead(
        booking_id=booking_id,
        event_id=body.event_id,
        user_id=user_id,
        quantity=body.quantity,
        status="confirmed",
        reason=None,
        created_at=now,
        decided_at=now,
        cancel_requested_at=None,
        cancelled_at=None,
        # Not read back (the design answers from what it wrote): the row has a number in the
        # event's line, but it left the line as it was stored, and the baseline has no line.
        queue_seq=0,
    )


@router.post(
    "/bookings-sync",
    status_code=status.HTTP_201_CREATED,
    response_model=Envelope[BookingRead],
    responses=error_responses(400, 401, 404, 409),
)
async def create_booking_sync(
    body: BookingCreate, user_id: TokenUserId, factory: SessionFactoryDep
) -> JSONResponse:
    """Book synchronously (benchmark baseline only): 201 confirmed or 409 with the reason."""
    return await book(factory, user_id, body)


async def book(factory: sessionmaker[Session], user_id: int, body: BookingCreate) -> JSONResponse:
    """The route once parsed: the route above and the lean path (``create_app``), so the
    baseline runs on the same HTTP layer as the queued intake."""
    booking = await run_in_threadpool(book_synchronously, factory, user_id, body)
    return JSONResponse(
        ok(booking.model_dump(mode="json", by_alias=True)), status_code=status.HTTP_201_CREATED
    )


async def _book_lean(state: Any, user_id: int, body: BookingCreate, *_: str | None) -> JSONResponse:
    return await book(state.session_factory, user_id, body)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The product's app with the baseline's route, which the lean path serves as it serves
    POST /api/bookings (with ``LEAN_PATH``), so the two designs pay for the same HTTP layer."""
    app = product.create_app(settings)
    assert isinstance(app, App)
    app.include_router(router)
    app.add_lean_post(ROUTE, _book_lean)
    return app
