"""Draining: every socket gets what it has queued, then a 1001 close ("going away"), so clients
reconnect to another instance."""

from __future__ import annotations

from api.hub import within
from api.realtime.connections import CLOSE, CLOSE_GOING_AWAY, ConnectionManager

# Tells clients when to come back (docs/websockets.md, "Reconnecting"): each waits a random
# part of it, so a draining instance's sockets return spread out, not in one burst.
RECONNECT_SPREAD_MS = 2000
GOING_AWAY_REASON = f"server shutting down; reconnect within {RECONNECT_SPREAD_MS} ms"


def begin_close(
    manager: ConnectionManager, code: int = CLOSE_GOING_AWAY, reason: str = GOING_AWAY_REASON
) -> None:
    """Send each socket what it has queued, then close it with ``code``; refuse new ones."""
    manager.closing = True
    for client in list(manager.clients.values()):
        if client.close_code is None:
            client.close_code, client.close_reason = code, reason
        if not manager.offer(client, CLOSE):
            client.end(code, reason)


async def drain(manager: ConnectionManager, timeout: float) -> None:
    """Close every socket as ``begin_close`` does and wait, at most ``timeout``, until all
    are gone."""
    begin_close(manager)
    await within(timeout, manager.idle.wait())


async def close_all(manager: ConnectionManager, timeout: float = 5.0) -> None:
    """The lifespan's shutdown: drain, then cancel what is still running in the background."""
    await drain(manager, timeout)
    for task in list(manager.tasks):
        task.cancel()
