"""Booking routes. Intake records the request and answers at once; a worker decides it.

``Prefer: wait=N`` (RFC 7240) on POST, GET and DELETE holds the answer until the booking is
decided or N seconds pass. A waiter holds no DB connection and no thread: it awaits the
``booking_status`` message on this instance's Redis subscription.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Header, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.deps import (
    CurrentUser,
    HubDep,
    IntakeDep,
    RedisDep,
    SeatsDep,
    SessionDep,
    SessionFactoryDep,
    SettingsDep,
    SignalDep,
    TokenUserId,
)
from api.envelope import Envelope, error_responses, ok
from api.hub import Hub
from api.metrics import record_accepted
from api.seats import SeatSnapshots
from common.bookings import holds, reads, service
from common.bookings.intake import IntakeRequest, IntakeWriter
from common.bookings.models import IN_LINE, Booking
from common.bookings.schemas import BookingCreate, BookingLogRead, BookingRead
from common.bookings.status import apply_decision, is_settled
from common.db import on_commit, session_scope
from common.errors import REJECTIONS, QueueFull, SoldOut
from common.settings import Settings
from common.users import service as users_service

router = APIRouter(prefix="/api/bookings", tags=["bookings"])
logger = logging.getLogger(__name__)

PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+)", re.IGNORECASE)
IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)
]
# The statuses a request's first decision gives it.
DECIDED = ("confirmed", "held", "rejected", "waitlisted")
# A database that cannot answer: no connection, none free, no reply (api.errors renders them 503).
UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout)
Prefer = Annotated[str | None, Header(description="RFC 7240, e.g. `wait=10` (at most 30)")]


def wait_seconds(prefer: str | None, limit: int) -> int:
    if not prefer:
        return 0
    match = PREFER_WAIT.search(prefer)
    if match is None:
        return 0
    # Compared as text first: int() refuses more than 4,300 digits, and any such wait is long.
    digits = match.group(1).lstrip("0") or "0"
    return limit if len(digits) > len(str(limit)) else min(int(digits), limit)


def _read(booking: Booking) -> dict[str, Any]:
    return BookingRead.model_validate(booking).model_dump(mode="json", by_alias=True)


async def _await_decision(
    hub: Hub, booking_id: str, seconds: int, reload: Callable[[], Booking]
) -> Booking:
    """Wait until the booking is settled or ``seconds`` pass; returns it as the database has it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        async with hub.waiter(booking_id) as decided:
            # Read after the waiter is in place, so a decision published in between is not missed.
            # A caller's timeout leaves the thread to its own bounds (DB_REPLY_TIMEOUT).
            booking = await to_thread.run_sync(reload, abandon_on_cancel=True)
            if is_settled(booking) or loop.time() >= deadline:
                return booking
            try:
                async with asyncio.timeout_at(deadline):
                    await decided
            except TimeoutError:
                pass


def _decided_response(booking: Booking, *, ok_status: int, headers: dict[str, str]) -> JSONResponse:
    if booking.status == "rejected" and booking.reason in REJECTIONS:
        error = REJECTIONS[booking.reason](details=[{"bookingId": booking.booking_id}])
        raise error
    # In line (a waitlisted request is settled, but has no seat yet): still 202.
    settled = is_settled(booking) and booking.status not in IN_LINE
    code = ok_status if settled else status.HTTP_202_ACCEPTED
    return JSONResponse(ok(_read(booking)), status_code=code, headers=headers)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Envelope[BookingRead],
    responses={
        201: {"description": "Confirmed within the `Prefer: wait` time"},
        **error_responses(400, 401, 404, 409, 413, 429, 503),
    },
)
async def create_booking(
    body: BookingCreate,
    user_id: TokenUserId,
    settings: SettingsDep,
    factory: SessionFactoryDep,
    hub: HubDep,
    writer: IntakeDep,
    seats: SeatsDep,
    idempotency_key: IdempotencyKey = None,
    prefer: Prefer = None,
) -> JSONResponse:
    """Accept a booking request: stored as ``pending`` and committed before the 202, with its
    ``queuePosition`` in the event's line.

    A worker decides it in arrival order: ``confirmed``, or ``rejected`` with a reason
    (``sold_out``, ``limit_exceeded``, ``event_past``), or ``waitlisted`` on an event with
    ``waitlistEnabled`` (confirmed later, in arrival order, as seats come back). Poll the
    ``Location``, send ``Prefer: wait=N`` (answered 202 as soon as it is waitlisted), or listen
    for ``booking_status`` on the WebSocket. 503 ``QUEUE_FULL`` with ``Retry-After`` when the
    event's line holds ``QUEUE_MAX_PER_EVENT`` requests.
    """
    return await accept_booking(
        settings, factory, hub, writer, seats, user_id, body, idempotency_key, prefer
    )


async def accept_booking(
    settings: Settings,
    factory: sessionmaker[Session],
    hub: Hub,
    writer: IntakeWriter,
    seats: SeatSnapshots,
    user_id: int,
    body: BookingCreate,
    idempotency_key: str | None,
    prefer: str | None,
) -> JSONResponse:
    """POST /api/bookings once parsed: the route above and the lean path (api.lean_path)."""
    wait = wait_seconds(prefer, settings.MAX_WAIT)
    if idempotency_key is None:
        left = seats.seats_left_if_sold_out(body.event_id, body.quantity)
        if left is not None:  # refused from memory: nothing to store, no round trip
            raise SoldOut(details=[{"field": "quantity", "message": f"{left} seats left"}])
    booking_id = service.new_booking_id()
    # Stored with the other requests of the moment in one statement and one commit, or 503 by
    # BOOKING_DEADLINE; what a wait reads after that has the wait's length more.
    deadline = time.monotonic() + settings.BOOKING_DEADLINE
    request = IntakeRequest(user_id, body, booking_id, idempotency_key, deadline)
    intake = partial(_submit, writer, seats, request)

    if not wait:
        booking, created = await intake()
        await _accepted(hub, booking, created)
        headers = {"Location": f"/api/bookings/{booking.booking_id}"}
        return JSONResponse(ok(_read(booking)), status_code=202, headers=headers)

    # The waiter is in place before the row is committed, so the decision cannot slip past it
    # and the booking need not be read back: one transaction per request, not three.
    message: dict[str, Any] | None = None
    async with hub.waiter(booking_id) as decided:
        booking, created = await intake()
        await _accepted(hub, booking, created)
        if created:
            try:
                async with asyncio.timeout(wait):
                    message = await decided
            except TimeoutError:
                pass
    headers = {
        "Location": f"/api/bookings/{booking.booking_id}",
        "Preference-Applied": f"wait={wait}",
    }
    if message is not None and message.get("status") in DECIDED:
        return _decided_response(
            apply_decision(booking, message), ok_status=status.HTTP_201_CREATED, headers=headers
        )
    reload = lambda: _reload(factory, user_id, booking.booking_id)  # noqa: E731
    try:
        async with asyncio.timeout(max(deadline + wait - time.monotonic(), 0)):
            if created:
                # No word within the wait (or a cancellation raced the decision): the database
                # says.
                booking = await to_thread.run_sync(reload, abandon_on_cancel=True)
            else:
                # An idempotent replay of an earlier request: wait for that booking instead.
                booking = await _await_decision(hub, booking.booking_id, wait, reload)
    except (TimeoutError, *UNAVAILABLE) as exc:
        # The booking is committed: the one this request holds is still its answer, if not the
        # latest news; a 503 would send a client without an Idempotency-Key to book again.
        logger.warning("answering the booking as stored, the database did not say: %r", exc)
    return _decided_response(booking, ok_status=status.HTTP_201_CREATED, headers=headers)


async def _submit(
    writer: IntakeWriter, seats: SeatSnapshots, request: IntakeRequest
) -> tuple[Booking, bool]:
    try:
        return await writer.submit(request)
    except QueueFull as exc:  # when to come back: the event's own pace says
        retry = seats.pace.retry_after(request.data.event_id, exc.excess)
        exc.headers["Retry-After"] = str(retry)
        raise


async def _accepted(hub: Hub, booking: Booking, created: bool) -> None:
    if created:
        record_accepted()
        logger.debug("booking accepted", extra={"booking_id": booking.booking_id})
    await hub.accepted(booking)  # its owner's sockets here follow its place in line


def _reload(factory: sessionmaker[Session], user_id: int, booking_id: str) -> Booking:
    with session_scope(factory) as session:
        user = users_service.get_active(session, user_id)
        return reads.get_booking(session, user, booking_id)


@router.get(
    "/{booking_id}",
    response_model=Envelope[BookingRead],
    responses={
        202: {"description": "Waitlisted, or still pending after `Prefer: wait`"},
        **error_responses(401, 404, 409),
    },
)
async def get_booking(
    booking_id: str,
    user_id: TokenUserId,
    settings: SettingsDep,
    factory: SessionFactoryDep,
    hub: HubDep,
    prefer: Prefer = None,
) -> JSONResponse:
    """The booking's current state; someone else's booking is 404. With ``Prefer: wait=N``,
    answers once it is decided: 200 confirmed or cancelled, 409 rejected, 202 still pending or
    waitlisted (``queuePosition`` is its place in line)."""
    return await read_booking(settings, factory, hub, user_id, booking_id, prefer)


async def read_booking(
    settings: Settings,
    factory: sessionmaker[Session],
    hub: Hub,
    user_id: int,
    booking_id: str,
    prefer: str | None,
) -> JSONResponse:
    """GET /api/bookings/{id} once parsed: the route above and the lean path (api.lean_path)."""
    wait = wait_seconds(prefer, settings.MAX_WAIT)
    reload = lambda: _reload(factory, user_id, booking_id)  # noqa: E731
    if not wait:
        booking = await run_in_threadpool(reload)
        return JSONResponse(ok(_read(booking)))
    booking = await _await_decision(hub, booking_id, wait, reload)
    return _decided_response(
        booking, ok_status=status.HTTP_200_OK, headers={"Preference-Applied": f"wait={wait}"}
    )


@router.delete(
    "/{booking_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Envelope[BookingRead],
    responses={
        200: {"description": "Cancelled within `Prefer: wait`"},
        **error_responses(401, 404, 409),
    },
)
async def cancel_booking(
    booking_id: str,
    user_id: TokenUserId,
    settings: SettingsDep,
    factory: SessionFactoryDep,
    signal: SignalDep,
    hub: HubDep,
    prefer: Prefer = None,
) -> JSONResponse:
    """Ask to cancel (owner or admin): 202, and a worker frees the seats (a pending or
    waitlisted request leaves the line). 409 if it is already cancelled, was rejected, or the
    event has started."""
    wait = wait_seconds(prefer, settings.MAX_WAIT)

    def ask() -> Booking:
        with session_scope(factory) as session:
            user = users_service.get_active(session, user_id)
            return service.request_cancellation(session, user, booking_id, signal)

    booking = await run_in_threadpool(ask)
    if wait:
        booking = await _await_decision(
            hub, booking_id, wait, lambda: _reload(factory, user_id, booking_id)
        )
    code = status.HTTP_200_OK if booking.status == "cancelled" else status.HTTP_202_ACCEPTED
    return JSONResponse(ok(_read(booking)), status_code=code)


@router.post(
    "/{booking_id}/confirm",
    response_model=Envelope[BookingRead],
    responses=error_responses(401, 404, 409),
)
def confirm_booking(
    booking_id: str, session: SessionDep, user: CurrentUser, publisher: RedisDep
) -> dict:
    """Confirm a held booking (owner or admin) before its ``expiresAt``: 200 ``confirmed``.
    Confirming a confirmed booking answers the same and changes nothing. 409 ``HOLD_EXPIRED``
    once the hold has ended (nothing changes), ``NOT_HELD`` while it is still in line,
    ``ALREADY_CANCELLED`` or ``BOOKING_REJECTED``."""
    booking = reads.get_booking(session, user, booking_id, for_update=True)
    booking, confirmed = holds.confirm_hold(session, booking, by="buyer")
    if confirmed:
        message = holds.confirmed_message(booking)
        on_commit(session, lambda: holds.publish_statuses(publisher, [message]))
    return ok(_read(booking))


@router.get(
    "/{booking_id}/logs",
    response_model=Envelope[list[BookingLogRead]],
    responses=error_responses(401, 404),
)
def booking_logs(booking_id: str, session: SessionDep, user: CurrentUser) -> dict:
    """The audit trail of one booking (owner or admin)."""
    return ok(
        [BookingLogRead.model_validate(r) for r in reads.booking_logs(session, user, booking_id)]
    )
