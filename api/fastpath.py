"""The lean path: POST /api/bookings and GET /api/bookings/{id} without the framework's layers.

A flash sale is thousands of the same two small requests. ``FastPath`` is a pure ASGI layer in
front of every middleware, FastAPI's own outer layers included (``App``): when a request is
one of those two in its plain form (a ``Bearer`` token, ``Content-Type: application/json``, a
small body that is exactly ``{"eventId": int, "quantity": int}`` within the schema's ranges, no
``Origin``), it verifies the token (``common.tokens``: once per token), calls the route's own
logic (``accept_booking`` / ``read_booking`` in ``api.routes.bookings``) and sends the answer
itself, with the request id and the request metrics the middlewares would have added. Anything
else, a bad token, a body that needs validating, a CORS request, any other route, goes to the
full FastAPI app untouched (the body it read is replayed), so the OpenAPI document, validation
errors and the error envelope stay exactly as they are.

``start`` builds what both paths share, from the app's lifespan: the seat snapshots
(``api.seats``), the group-commit writer (``common.bookings.intake``), the token cache, and the
threadpool sized to the database pool so no thread waits on a connection that is not there.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from anyio import to_thread
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics import REQUEST_SECONDS, REQUESTS
from api.middleware import AllowedHostsMiddleware, body_timed_out, request_id_var, send_error
from api.routes.bookings import accept_booking, read_booking
from api.seats import SeatSnapshots
from common.bookings.intake import IntakeWriter
from common.bookings.schemas import MAX_QUANTITY, BookingCreate
from common.errors import InvalidToken
from common.tokens import token_cache

MAX_BODY = 1024  # the plain body is about 30 bytes; anything larger takes the full path
MAX_ID = 2**31 - 1
BOOKING_PATH = re.compile(r"/api/bookings/([^/]+)")
# The route templates the metrics middleware would have recorded.
POST_ROUTE, GET_ROUTE = "/api/bookings", "/api/bookings/{booking_id}"
SYNC_ROUTE = "/api/bench/bookings-sync"  # the benchmark's baseline, on the same lean layer


async def _accept(
    state: Any, user_id: int, data: BookingCreate, key: str | None, prefer: str | None
) -> Response:
    return await accept_booking(
        state.settings,
        state.session_factory,
        state.hub,
        state.intake,
        state.seats,
        user_id,
        data,
        key,
        prefer,
    )


async def _book_synchronously(
    state: Any, user_id: int, data: BookingCreate, *_: str | None
) -> Response:
    from api.routes import baseline  # only mounted with ENABLE_SYNC_BASELINE

    return await baseline.book(state.session_factory, user_id, data)


def start(state: Any) -> None:
    """Called by the lifespan once the engine, the Redis clients and the Hub exist."""
    settings = state.settings
    # No more threads than pooled connections: a thread beyond the pool opens an overflow
    # connection and closes it on return, a new PostgreSQL session per request under load.
    threads = settings.API_THREADS or settings.DB_POOL_SIZE
    to_thread.current_default_thread_limiter().total_tokens = threads
    state.tokens = token_cache(settings)
    state.seats = SeatSnapshots(state.session_factory, settings.SEAT_SNAPSHOT_MAX_AGE)
    state.hub.add_listener(state.seats.on_message)
    state.intake = IntakeWriter(
        state.session_factory,
        state.signal,
        max_pending=settings.MAX_PENDING_PER_USER,
        max_line=settings.QUEUE_MAX_PER_EVENT,
        window=settings.INTAKE_BATCH_WINDOW,
        batch_size=settings.INTAKE_BATCH_SIZE,
        writers=settings.INTAKE_WRITERS,
        observe=state.seats.observe,
    )


def stop(state: Any) -> None:
    intake = getattr(state, "intake", None)
    if intake is not None:
        intake.close()


class App(FastAPI):
    """FastAPI with the lean path in front of all of it, its own outer layers included
    (``lean=False``: plain FastAPI)."""

    def __init__(self, *, lean: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lean = FastPath(partial(FastAPI.__call__, self)) if lean else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._lean is None:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        await self._lean(scope, receive, send)


class FastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._metrics: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._hosts: AllowedHostsMiddleware | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._allowed_host(scope):
            method, path = scope["method"], scope["path"]
            if method == "POST" and path == POST_ROUTE:
                await self._post(scope, receive, send, POST_ROUTE, _accept)
                return
            if method == "POST" and path == SYNC_ROUTE and self._baseline(scope):
                await self._post(scope, receive, send, SYNC_ROUTE, _book_synchronously)
                return
            if method == "GET" and path.startswith("/api/bookings/"):
                match = BOOKING_PATH.fullmatch(path)
                if match is not None:
                    await self._get(scope, receive, send, match.group(1))
                    return
        await self.app(scope, receive, send)

    def _baseline(self, scope: Scope) -> bool:
        return bool(scope["app"].state.settings.ENABLE_SYNC_BASELINE)

    async def _post(
        self, scope: Scope, receive: Receive, send: Send, route: str, handle: Callable[..., Any]
    ) -> None:
        headers = _plain_headers(scope, body=True)
        if headers is None:
            await self.app(scope, receive, send)
            return
        # The body deadline BodyLimitMiddleware keeps on the full path (HTTP_BODY_TIMEOUT).
        # asyncio's own timeout, the lighter of the two on a path every refusal takes.
        limit = scope["app"].state.settings.HTTP_BODY_TIMEOUT
        try:
            async with asyncio.timeout(limit):
                body = await _read_body(receive)
        except TimeoutError:
            await send_error(send, 408, body_timed_out(limit))
            return
        if body is None:
            return  # the client is gone: nothing was stored, nobody to answer
        parsed = _booking(body)
        user_id = None if parsed is None else self._user(scope, headers)
        if parsed is None or user_id is None:
            await self.app(scope, _replay(body, receive), send)
            return
        state = scope["app"].state
        data = BookingCreate.model_construct(event_id=parsed[0], quantity=parsed[1])
        await self._answer(
            scope,
            send,
            headers,
            route,
            lambda: handle(
                state, user_id, data, headers.get("idempotency-key"), headers.get("prefer")
            ),
        )

    def _allowed_host(self, scope: Scope) -> bool:
        """The Host check of AllowedHostsMiddleware, which the full path would apply."""
        hosts = self._hosts
        if hosts is None:
            hosts = self._hosts = AllowedHostsMiddleware(
                self.app, scope["app"].state.settings.ALLOWED_HOSTS
            )
        if hosts.any:
            return True
        return hosts.allows(dict(scope["headers"]).get(b"host", b"").decode("latin-1"))

    async def _get(self, scope: Scope, receive: Receive, send: Send, booking_id: str) -> None:
        headers = _plain_headers(scope, body=False)
        user_id = None if headers is None else self._user(scope, headers)
        if headers is None or user_id is None:
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        await self._answer(
            scope,
            send,
            headers,
            GET_ROUTE,
            lambda: read_booking(
                state.settings,
                state.session_factory,
                state.hub,
                user_id,
                booking_id,
                headers.get("prefer"),
            ),
        )

    def _user(self, scope: Scope, headers: dict[str, str]) -> int | None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme != "Bearer" or not token:
            return None
        try:
            return scope["app"].state.tokens.user_id(token)
        except InvalidToken:
            return None  # the full path answers it, WWW-Authenticate and all

    async def _answer(
        self,
        scope: Scope,
        send: Send,
        headers: dict[str, str],
        route: str,
        handle: Callable[[], Awaitable[Response]],
    ) -> None:
        started = time.perf_counter()
        incoming = headers.get("x-request-id")
        request_id = incoming[:64] if incoming else uuid.uuid4().hex
        context = request_id_var.set(request_id)
        try:
            try:
                response = await handle()
            except Exception as exc:  # the app's own handlers render it: one envelope
                response = await _handled(scope, exc)
        finally:
            request_id_var.reset(context)
        raw = response.raw_headers
        raw.append((b"x-request-id", request_id.encode("latin-1")))
        status = response.status_code
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": response.body})
        counter, timer = self._metric(scope["method"], route, status)
        counter.inc()
        timer.observe(time.perf_counter() - started)

    def _metric(self, method: str, route: str, status: int) -> tuple[Any, Any]:
        key = (method, route, status)
        found = self._metrics.get(key)
        if found is None:
            found = self._metrics[key] = (
                REQUESTS.labels(method, route, str(status)),
                REQUEST_SECONDS.labels(method, route),
            )
        return found


# Headers the lean path understands; any other is harmless (ignored by the routes too),
# except these, which need the full path's middlewares.
_NEEDS_FULL_PATH = {b"origin", b"transfer-encoding", b"expect"}
_KNOWN = {
    b"authorization": "authorization",
    b"content-type": "content-type",
    b"content-length": "content-length",
    b"idempotency-key": "idempotency-key",
    b"prefer": "prefer",
    b"x-request-id": "x-request-id",
}


def _plain_headers(scope: Scope, *, body: bool) -> dict[str, str] | None:
    found: dict[str, str] = {}
    for name, value in scope["headers"]:
        key = _KNOWN.get(name)
        if key is not None:
            if key in found:
                return None  # a repeated header: let the framework decide which one counts
            found[key] = value.decode("latin-1")
        elif name in _NEEDS_FULL_PATH:
            return None
    if body:
        length = found.get("content-length", "")
        if (
            found.get("content-type") != "application/json"
            or not length.isdigit()
            or int(length) > MAX_BODY
        ):
            return None
        key = found.get("idempotency-key")
        if key is not None and not 1 <= len(key) <= 255:
            return None
    return found


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body (the server holds it to its Content-Length); None if the client left."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the full path the body already read, then waits as before."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


def _booking(body: bytes) -> tuple[int, int] | None:
    """(eventId, quantity) of a body the schema would accept as it is; None for anything else."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if type(data) is not dict or not data.keys() <= {"eventId", "quantity"}:
        return None
    event_id, quantity = data.get("eventId"), data.get("quantity", 1)
    if type(event_id) is not int or type(quantity) is not int:
        return None  # bools, floats and strings: pydantic's own rules decide
    if not (1 <= event_id <= MAX_ID and 1 <= quantity <= MAX_QUANTITY):
        return None
    return event_id, quantity


async def _handled(scope: Scope, exc: Exception) -> Response:
    """The response the app's exception handlers give ``exc`` (``api.errors``)."""
    app = scope["app"]
    for cls in type(exc).__mro__:
        handler = app.exception_handlers.get(cls)
        if handler is not None:
            return await handler(Request(scope), exc)
    raise exc
