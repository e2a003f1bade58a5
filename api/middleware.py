"""Pure ASGI middleware: a request id on every request (and its 500s), allowed hosts, CORS
refusals in the envelope and a cap on body size and time.

What every answer carries (``finish_headers``), which Host a request names (``request_host``),
its request id (``request_id``) and how a refusal is rendered (``error_response``) are each
written once here: the lean path (api/lean_path.py) uses the same functions.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

import anyio
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.envelope import error_body
from api.errors import unhandled_error_handler

MAX_BODY_BYTES = 64 * 1024
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


# An incoming X-Request-ID is kept when it is visible ASCII (cut to 64 characters): it goes
# into log lines and back out as a header, where anything else would be read differently.
_REQUEST_ID = re.compile(r"[!-~]+")


def request_id(incoming: str | None) -> str:
    """The request's id: the client's ``X-Request-ID`` (latin-1 decoded, as ASGI gives it) if
    it is visible ASCII, cut to 64 characters; else a new one."""
    if incoming:
        incoming = incoming[:64]
        if _REQUEST_ID.fullmatch(incoming):
            return incoming
    return uuid.uuid4().hex


def finish_headers(headers: list[tuple[bytes, bytes]], rid: str) -> list[tuple[bytes, bytes]]:
    """What every HTTP answer carries, whichever path built it: its request id, and
    ``Vary: Origin`` (CORS headers depend on the Origin, so no cache may give one origin's
    answer to another)."""
    for index, (name, value) in enumerate(headers):
        if name.lower() == b"vary":
            if b"origin" not in value.lower():
                headers[index] = (name, value + b", Origin")
            break
    else:
        headers.append((b"vary", b"Origin"))
    headers.append((b"x-request-id", rid.encode("ascii")))
    return headers


def error_response(status: int, body: dict) -> Response:
    """A refusal made before the app answers (Host, size, body deadline); the connection is
    closed, since the rest of the request may still be on its way."""
    return JSONResponse(body, status_code=status, headers={"connection": "close"})


async def send_response(send: Send, response: Response) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": response.raw_headers,
        }
    )
    await send({"type": "http.response.body", "body": response.body})


async def send_error(send: Send, status: int, body: dict) -> None:
    await send_response(send, error_response(status, body))


def request_host(scope: Scope) -> str | None:
    """The request's one ``Host`` (latin-1, as ASGI gives it; "" if none); None when it names
    more than one, which RFC 9112 says to refuse: the allow-list and Starlette's URLs (the
    slash redirect's Location) would each read a different one."""
    host = None
    for name, value in scope["headers"]:
        if name == b"host":
            if host is not None:
                return None
            host = value
    return "" if host is None else host.decode("latin-1")


def host_name(host: str) -> str:
    """``Host`` without its port: ``example.com:8000`` -> ``example.com``, ``[::1]:80`` ->
    ``[::1]``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.split(":", 1)[0]


class AllowedHostsMiddleware:
    """Refuse a ``Host`` not in ``ALLOWED_HOSTS`` (``*`` any, ``*.example.com`` its
    subdomains): 400 ``INVALID_HOST``, or a refused WebSocket handshake. Redirects and absolute
    URLs are built from the Host, so an unchecked one would be reflected to the client."""

    def __init__(self, app: ASGIApp, allowed: list[str]) -> None:
        self.app = app
        names = [name.strip().lower() for name in allowed]
        self.any = "*" in names
        self.exact = {name for name in names if not name.startswith("*.")}
        self.suffixes = tuple(name[1:] for name in names if name.startswith("*."))

    def allows(self, host: str) -> bool:
        name = host_name(host)
        return name in self.exact or (bool(self.suffixes) and name.endswith(self.suffixes))

    def admits(self, scope: Scope) -> bool:
        """One Host, and an allowed one (any, with ``*``)."""
        host = request_host(scope)
        return host is not None and (self.any or self.allows(host))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.admits(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "invalid host"})
        else:
            await send_error(send, 400, error_body("INVALID_HOST", "Host header not allowed"))


class EnvelopeCORSMiddleware(CORSMiddleware):
    """Starlette's CORS (pure ASGI), with a refused preflight answered in the error envelope:
    400 ``CORS_REFUSED`` instead of a text/plain "Disallowed CORS origin"."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        keep = {
            k: v for k, v in response.headers.items() if k not in ("content-type", "content-length")
        }
        message = bytes(response.body).decode()
        return JSONResponse(error_body("CORS_REFUSED", message), status_code=400, headers=keep)


def body_timed_out(seconds: float) -> dict[str, object]:
    return error_body("REQUEST_TIMEOUT", f"The request body did not arrive within {seconds:g} s")


class BodyLimitMiddleware:
    """Refuse bodies over the limit, by Content-Length up front or by counting a chunked body,
    and bodies not received within ``body_timeout`` seconds of the app asking for them (408).

    The clock starts when the app first reads the body, after the headers (their own deadline
    is ``api.protocol``'s), and stops once the body is in: a streamed response's wait for the
    client's disconnect is not bounded.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES, body_timeout: float = 30.0
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"Request body exceeds {self.max_bytes} bytes"
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_bytes:
                    await send_error(send, 413, error_body("PAYLOAD_TOO_LARGE", too_large))
                    return
        received = 0
        started = refused = complete = False
        deadline: float | None = None

        async def refuse(status: int, error: dict[str, object]) -> Message:
            # Answer ourselves and tell the app the client went away, whatever it does next.
            nonlocal refused
            if not started and not refused:
                refused = True
                await send_error(send, status, error)
            return {"type": "http.disconnect"}

        async def limited_receive() -> Message:
            nonlocal received, complete, deadline
            if complete:
                return await receive()
            if deadline is None:
                deadline = anyio.current_time() + self.body_timeout
            with anyio.move_on_after(deadline - anyio.current_time()) as waiting:
                message = await receive()
            if waiting.cancelled_caught:
                return await refuse(408, body_timed_out(self.body_timeout))
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.max_bytes:
                    return await refuse(413, error_body("PAYLOAD_TOO_LARGE", too_large))
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, tracking_send)


class RequestIdMiddleware:
    """A request id on every request (``X-Request-ID`` in, or a new one) and on its response and
    log lines. It also renders the last-resort 500: Starlette's own handler for unhandled
    exceptions sits outside every middleware, where the request id is already gone."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = request_id(incoming)
        token = request_id_var.set(rid)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = finish_headers(list(message.get("headers", [])), rid)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if scope["type"] != "http" or started:
                raise  # nothing left to answer with; uvicorn logs it and drops the connection
            response = await unhandled_error_handler(Request(scope), exc)
            await response(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
