"""Encode once, write many: a seat message is framed once per process and the same bytes are
written to every socket that is idle.

A server's WebSocket frames are not masked (RFC 6455, 5.1), so one text frame serves every
socket; with permessage-deflate negotiated an uncompressed frame (RSV1 clear) is still valid
(RFC 7692, 6). The bytes go straight to the socket's transport, skipping the ASGI ``send`` and
the socket's sender task, which cost about 80 µs per socket and message. Only a socket with
nothing queued and no frame being sent takes the shortcut, so its messages keep their order;
any other goes through its queue as before. ``RawSend`` records the server's own ``send``,
from which the transport is found; where it is not there (another server, a test client), every
message goes through the queue.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

SCOPE_KEY = "ebs.raw_send"


def text_frame(text: str) -> bytes:
    payload = text.encode()
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x81, size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


def transport_of(scope: Scope) -> asyncio.WriteTransport | None:
    """The socket's transport when the server is uvicorn's (its ``send`` is a method of the
    protocol, which holds it); None otherwise."""
    send: Any = scope.get(SCOPE_KEY)
    protocol = getattr(send, "__self__", None)
    transport = getattr(protocol, "transport", None)
    if transport is None or not hasattr(transport, "get_write_buffer_size"):
        return None
    return transport


class RawSend:
    """Pure ASGI middleware, outermost: keeps the server's ``send`` of each WebSocket in its
    scope before any layer wraps it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope[SCOPE_KEY] = send
        await self.app(scope, receive, send)
