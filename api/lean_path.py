"""The lean path: POST /api/bookings and GET /api/bookings/{id} without the framework's layers.

A flash sale is thousands of the same two small requests. ``LeanPath`` is a pure ASGI layer in
front of every middleware, FastAPI's own outer layers included (``App``): when a request is
one of those two in its plain form (one allowed Host, a ``Bearer`` token,
``Content-Type: application/json``, a small body that ``BookingCreate`` accepts as it is, no
``Origin``), it verifies the token (``common.tokens``: once per token), calls the route's own
logic (``accept_booking`` / ``read_booking`` in ``api.routes.bookings``) and sends the answer
itself, finished as the middlewares finish theirs (``api.middleware.finish_headers``: request id
and ``Vary``) and counted as they count (``api.metrics.observe_request``). Anything else, a bad
token, a body that needs validating, a CORS request, any other route, goes to the full FastAPI
app untouched (the body it read is replayed), so the OpenAPI document, validation errors and
the error envelope stay exactly as they are.

It takes what it stands in for from the app, never from literals: the two routes (path,
template and regex) from the bookings router, the Host check from the app's own
``AllowedHostsMiddleware``, the body's rules from the schema. The app's lifespan installs it
only with ``LEAN_PATH``; tests/test_lean_path.py feeds both paths the same generated requests
and freezes what the full stack applies to the two routes. An app may add POST routes of the
same body (``App.add_lean_post``): the bench's synchronous baseline rides this layer that way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics import observe_request
from api.middleware import (
    AllowedHostsMiddleware,
    body_timed_out,
    error_response,
    finish_headers,
    request_id,
    request_id_var,
)
from api.routes import bookings
from api.routes.bookings import accept_booking, read_booking
from common.bookings.schemas import BookingCreate
from common.errors import InvalidToken

MAX_BODY = 1024  # the plain body is about 30 bytes; anything larger takes the full path
# A POST route's logic once the lean path has parsed the request: (app state, user id, body,
# Idempotency-Key, Prefer) -> the response.
LeanPost = Callable[[Any, int, BookingCreate, str | None, str | None], Awaitable[Response]]


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


class App(FastAPI):
    """FastAPI with the lean path in front of all of it, its own outer layers included, once
    the lifespan has installed it (``install``); until then, and without ``LEAN_PATH``, plain
    FastAPI."""

    lean: LeanPath | None = None
    # More POST routes taking a BookingCreate, served on the lean path the same way (path ->
    # logic), each also mounted on the app for what the lean path hands on (the bench's).
    lean_posts: dict[str, LeanPost] = {}

    def add_lean_post(self, path: str, handle: LeanPost) -> None:
        self.lean_posts = {**self.lean_posts, path: handle}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lean = self.lean
        if lean is None:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        await lean(scope, receive, send)


def install(app: App) -> None:
    """Put the lean path in front of ``app``: from its lifespan, once the state it uses is
    built, and only with ``LEAN_PATH``."""
    app.lean = LeanPath(app)


def uninstall(app: App) -> None:
    app.lean = None


def _route(endpoint: Callable[..., Any]) -> APIRoute:
    """The route ``endpoint`` is served on: its path, template and regex come from the router."""
    for route in bookings.router.routes:
        if isinstance(route, APIRoute) and route.endpoint is endpoint:
            return route
    raise LookupError(f"{endpoint.__name__} is not routed")


def _middleware(app: FastAPI, cls: Any) -> dict[str, Any]:
    """The options ``app`` was given for middleware ``cls`` (its ``add_middleware`` call)."""
    for middleware in app.user_middleware:
        if middleware.cls is cls:
            return dict(middleware.kwargs)
    raise LookupError(f"{cls.__name__} is not installed")


class LeanPath:
    def __init__(self, app: App) -> None:
        self.app: ASGIApp = partial(FastAPI.__call__, app)
        self.state = app.state
        self.post_route = _route(bookings.create_booking)
        self.get_route = _route(bookings.get_booking)
        # The same middleware the full path runs, with the same options: one Host check.
        self.hosts = AllowedHostsMiddleware(self.app, **_middleware(app, AllowedHostsMiddleware))
        self.posts: dict[str, LeanPost] = {self.post_route.path: _accept, **app.lean_posts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.hosts.admits(scope):
            method, path = scope["method"], scope["path"]
            if method == "POST":
                handle = self.posts.get(path)
                if handle is not None:
                    await self._post(scope, receive, send, path, handle)
                    return
            elif method == "GET":
                match = self.get_route.path_regex.match(path)
                if match is not None:
                    await self._get(scope, receive, send, match.group("booking_id"))
                    return
        await self.app(scope, receive, send)

    async def _post(
        self, scope: Scope, receive: Receive, send: Send, route: str, handle: LeanPost
    ) -> None:
        headers = _plain_headers(scope, body=True)
        if headers is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # The body deadline BodyLimitMiddleware keeps on the full path (HTTP_BODY_TIMEOUT).
        # asyncio's own timeout, the lighter of the two on a path every refusal takes.
        limit = self.state.settings.HTTP_BODY_TIMEOUT
        try:
            async with asyncio.timeout(limit):
                body = await _read_body(receive)
        except TimeoutError:
            rid = request_id(headers.get("x-request-id"))
            response = error_response(408, body_timed_out(limit))
            await self._send(scope, send, response, rid, route, started)
            return
        if body is None:
            return  # the client is gone: nothing was stored, nobody to answer
        data = _booking(body)
        user_id = None if data is None else self._user(headers)
        if data is None or user_id is None:
            await self.app(scope, _replay(body, receive), send)
            return
        state = self.state
        await self._answer(
            scope,
            send,
            headers,
            route,
            started,
            lambda: handle(
                state, user_id, data, headers.get("idempotency-key"), headers.get("prefer")
            ),
        )

    async def _get(self, scope: Scope, receive: Receive, send: Send, booking_id: str) -> None:
        headers = _plain_headers(scope, body=False)
        user_id = None if headers is None else self._user(headers)
        if headers is None or user_id is None:
            await self.app(scope, receive, send)
            return
        state = self.state
        await self._answer(
            scope,
            send,
            headers,
            self.get_route.path,
            time.perf_counter(),
            lambda: read_booking(
                state.settings,
                state.session_factory,
                state.hub,
                user_id,
                booking_id,
                headers.get("prefer"),
            ),
        )

    def _user(self, headers: dict[str, str]) -> int | None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme != "Bearer" or not token:
            return None
        try:
            return self.state.tokens.user_id(token)
        except InvalidToken:
            return None  # the full path answers it, WWW-Authenticate and all

    async def _answer(
        self,
        scope: Scope,
        send: Send,
        headers: dict[str, str],
        route: str,
        started: float,
        handle: Callable[[], Awaitable[Response]],
    ) -> None:
        rid = request_id(headers.get("x-request-id"))
        context = request_id_var.set(rid)
        try:
            try:
                response = await handle()
            except Exception as exc:  # the app's own handlers render it: one envelope
                response = await _handled(scope, exc)
        finally:
            request_id_var.reset(context)
        await self._send(scope, send, response, rid, route, started)

    async def _send(
        self, scope: Scope, send: Send, response: Response, rid: str, route: str, started: float
    ) -> None:
        """Send an answer finished and counted as the full path's middlewares would."""
        raw = finish_headers(response.raw_headers, rid)
        status = response.status_code
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": response.body})
        observe_request(scope["method"], route, status, time.perf_counter() - started)


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
    """A receive that hands the full path the body already read, then the server's own."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


def _booking(body: bytes) -> BookingCreate | None:
    """The body as the schema reads it (strictly, from JSON, as the full path reads it); None
    for anything it refuses, which the full path then answers."""
    try:
        return BookingCreate.model_validate_json(body)
    except ValidationError:
        return None


async def _handled(scope: Scope, exc: Exception) -> Response:
    """The response the app's exception handlers give ``exc`` (``api.errors``)."""
    app = scope["app"]
    for cls in type(exc).__mro__:
        handler = app.exception_handlers.get(cls)
        if handler is not None:
            return await handler(Request(scope), exc)
    raise exc
