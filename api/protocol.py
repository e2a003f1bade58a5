"""The HTTP protocol uvicorn runs for this API: its own (httptools), plus a deadline for headers.

uvicorn closes a connection only when it idles *after* a response (``--timeout-keep-alive``).
A connection that sends nothing, or half a request line or header block, is held open forever:
1,000 of them cost 1,000 file descriptors and never go away. Here each connection must complete
a request's headers within ``HTTP_HEADER_TIMEOUT`` seconds of opening, and again of each
response; otherwise it is closed. The body then has ``HTTP_BODY_TIMEOUT`` (checked in
``api.middleware.BodyLimitMiddleware``, where the body is read).

Every uvicorn command line of the project passes ``--http api.protocol:HttpProtocol``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from common.settings import get_settings


class HttpProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = get_settings().HTTP_HEADER_TIMEOUT
        self.header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # for the next request on this connection

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the transport now belongs to the WebSocket
        super().handle_websocket_upgrade()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self.header_timer = self.loop.call_later(self.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _expire(self) -> None:
        self.header_timer = None
        if not self.transport.is_closing():
            self.transport.close()
