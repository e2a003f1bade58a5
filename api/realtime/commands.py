"""The command protocol: what a signed-in client may send, and the stats it can ask for."""

from __future__ import annotations

import json
from typing import Any

import anyio

from api.realtime.connections import CLOSE_POLICY, Client, ConnectionManager, error
from api.realtime.snapshots import subscribe, unsubscribe
from common.pubsub import encode, now_iso

MAX_CLIENT_MESSAGE = 4096  # characters; commands are tiny
MAX_EVENT_ID = 2**31 - 1  # events.id is a PostgreSQL integer


class BadMessage(Exception):
    """A client frame that is no command: answered with an ``error`` of this code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def decode(text: str | None) -> dict[str, Any]:
    """The JSON object a client frame carries; anything else is a ``BadMessage``.

    Every frame a client sends, the first ``auth`` one included, is read here, so no shape
    (a number where an object was expected, brackets nested past the parser's recursion
    limit) reaches the code that acts on it.
    """
    if text is None:
        raise BadMessage("INVALID_MESSAGE", "Send JSON text frames")
    if len(text) > MAX_CLIENT_MESSAGE:
        raise BadMessage("MESSAGE_TOO_LARGE", "Message too large")
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        raise BadMessage("INVALID_JSON", "Message is not valid JSON") from None
    if not isinstance(message, dict):
        raise BadMessage("UNKNOWN_TYPE", "A message is a JSON object with a type")
    return message


def field(message: dict[str, Any], name: str) -> Any:
    """``name`` at the top level, or inside ``data`` (the form the seed's clients send)."""
    if name in message:
        return message[name]
    data = message.get("data")
    return data.get(name) if isinstance(data, dict) else None


def event_id_of(message: dict[str, Any]) -> int:
    event_id = field(message, "eventId")
    if (
        not isinstance(event_id, int)
        or isinstance(event_id, bool)
        or not 1 <= event_id <= MAX_EVENT_ID
    ):
        raise BadMessage("INVALID_EVENT_ID", "eventId must be an integer ≥ 1")
    return event_id


def admit(manager: ConnectionManager, client: Client) -> bool:
    """Whether to act on the frame just received: at most ``WS_COMMANDS_PER_SECOND`` per
    socket per second. Past that each frame gets a ``RATE_LIMITED`` error; past twice that in
    one second the socket is closed (1008)."""
    limit = manager.settings.WS_COMMANDS_PER_SECOND
    now = anyio.current_time()
    if now - client.window_start >= 1.0:
        client.window_start, client.window_count = now, 0
    client.window_count += 1
    if client.window_count <= limit:
        return True
    if client.window_count > 2 * limit:
        client.end(CLOSE_POLICY, "too many messages")
    else:
        manager.offer(client, error("RATE_LIMITED", f"At most {limit} messages per second"))
    return False


async def handle(manager: ConnectionManager, client: Client, text: str | None) -> None:
    try:
        message = decode(text)
        await _dispatch(manager, client, message)
    except BadMessage as bad:
        manager.offer(client, error(bad.code, bad.message))


async def _dispatch(manager: ConnectionManager, client: Client, message: dict[str, Any]) -> None:
    kind = message.get("type")
    if kind == "ping":
        manager.offer(client, encode("pong", {"timestamp": now_iso()}))
    elif kind == "subscribe_event":
        await subscribe(manager, client, event_id_of(message))
    elif kind == "unsubscribe_event":
        unsubscribe(manager, client, event_id_of(message))
    elif kind == "get_stats":
        manager.offer(client, encode("stats", stats(manager, client)))
    elif kind == "auth":
        manager.offer(client, error("ALREADY_AUTHENTICATED", "This connection is signed in"))
    else:
        raise BadMessage("UNKNOWN_TYPE", f"Unknown message type: {kind!r}")


def stats(manager: ConnectionManager, client: Client) -> dict[str, Any]:
    settings = manager.settings
    return {
        "clientId": client.id,
        "userId": client.user_id,
        "subscriptions": sorted(client.events),
        "maxSubscriptions": settings.WS_MAX_SUBSCRIPTIONS,
        "queueLimit": settings.WS_QUEUE_SIZE,
        "connections": len(manager.clients),
        "subscribers": {str(e): len(manager.by_event.get(e, ())) for e in sorted(client.events)},
        "queued": sum(c.queue.qsize() for c in manager.clients.values()),
        "droppedClients": manager.dropped,
        "redisConnected": manager.hub.connected.is_set(),
        "resyncs": manager.resyncs,
        "timestamp": now_iso(),
    }
