"""Pure ASGI middleware: a request id on every request (and its 500s), allowed hosts, CORS
refusals in the envelope and a cap on body size."""

from __future__ import annotations

import json
import uuid
from contextvars import ContextVar

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.envelope import error_body
from api.errors import unhandled_error_handler

MAX_BODY_BYTES = 64 * 1024
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


async def _send_error(send: Send, status: int, body: dict) -> None:
    content = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})


async def _send_413(send: Send) -> None:
    message = f"Request body exceeds {MAX_BODY_BYTES} bytes"
    await _send_error(send, 413, error_body("PAYLOAD_TOO_LARGE", message))


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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.any or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if self.allows(host):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "invalid host"})
        else:
            await _send_error(send, 400, error_body("INVALID_HOST", "Host header not allowed"))


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


class BodyLimitMiddleware:
    """Refuse bodies over the limit, by Content-Length up front or by counting a chunked body."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_bytes:
                    await _send_413(send)
                    return
        received = 0
        started = refused = False

        async def limited_receive() -> Message:
            # A chunked body has no Content-Length: count it, answer 413 ourselves at the
            # limit and tell the app the client went away, whatever it does with the error.
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if not started and not refused:
                        refused = True
                        await _send_413(send)
                    return {"type": "http.disconnect"}
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
        request_id = incoming[:64] if incoming else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
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
