"""SIGTERM/SIGINT: close every socket with 1001 before uvicorn closes them with 1012.

Kept, not left to uvicorn: uvicorn closes open WebSockets with 1012 ("service restart") as soon
as its own handler has run, before the lifespan's shutdown, and drops what their queues still
hold. Draining first sends each client its queued messages (a ``booking_status`` among them)
and a 1001 ("going away"), which tells it this instance is leaving (docs/websockets.md).
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from typing import Any

from api.realtime.connections import ConnectionManager
from api.realtime.serve import CLOSE_TIMEOUT
from api.realtime.shutdown import drain


def close_on_signals(manager: ConnectionManager) -> Callable[[], None]:
    """Close every socket with 1001 as soon as SIGTERM or SIGINT arrives, then let the server's
    own handler run.

    The sockets are drained first (at most ``CLOSE_TIMEOUT``): chaining the handlers at once let
    uvicorn's 1012 overtake our 1001 on a loaded machine. Returns a function that puts the
    previous handlers back.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # e.g. TestClient: no signals here; lifespan shutdown closes sockets
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}

    async def drain_then_chain(signum: int, frame: Any) -> None:
        try:
            await drain(manager, CLOSE_TIMEOUT)
        finally:
            previous[signum](signum, frame)

    def handler(signum: int, frame: Any) -> None:
        loop.call_soon_threadsafe(lambda: manager.spawn(drain_then_chain(signum, frame)))

    for sig in (signal.SIGTERM, signal.SIGINT):
        # Only in front of a server's own handler: a default action must stay the default.
        if callable(signal.getsignal(sig)):
            previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, chained in previous.items():
            signal.signal(sig, chained)

    return restore
