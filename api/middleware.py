"""Pure ASGI middleware: a request id on every request, a cap on body size and time."""

from __future__ import annotations

import json
import uuid
from contextvars import ContextVar

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.envelope import error_body

MAX_BODY_BYTES = 64 * 1024
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


async def _refuse(send: Send, status: int, error: dict[str, object]) -> None:
    """Answer ``error`` (an envelope) and close the connection: the rest of the body is unread."""
    body = json.dumps(error).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


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
                    await _refuse(send, 413, error_body("PAYLOAD_TOO_LARGE", too_large))
                    return
        received = 0
        started = refused = complete = False
        deadline: float | None = None

        async def refuse(status: int, error: dict[str, object]) -> Message:
            # Answer ourselves and tell the app the client went away, whatever it does next.
            nonlocal refused
            if not started and not refused:
                refused = True
                await _refuse(send, status, error)
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
                timeout = f"The request body did not arrive within {self.body_timeout:g} s"
                return await refuse(408, error_body("REQUEST_TIMEOUT", timeout))
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
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming[:64] if incoming else uuid.uuid4().hex
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
