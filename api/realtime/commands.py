"""The command protocol: what a signed-in client may send, and the stats it can ask for."""

from __future__ import annotations

import json
from typing import Any

from api.realtime.connections import Client, ConnectionManager, error
from api.realtime.snapshots import subscribe, unsubscribe
from common.pubsub import encode, now_iso

MAX_CLIENT_MESSAGE = 4096  # characters; commands are tiny


async def handle(manager: ConnectionManager, client: Client, text: str | None) -> None:
    if text is None:
        manager.offer(client, error("INVALID_MESSAGE", "Send JSON text frames"))
        return
    if len(text) > MAX_CLIENT_MESSAGE:
        manager.offer(client, error("MESSAGE_TOO_LARGE", "Message too large"))
        return
    try:
        message = json.loads(text)
    except ValueError:
        manager.offer(client, error("INVALID_JSON", "Message is not valid JSON"))
        return
    kind = message.get("type") if isinstance(message, dict) else None
    if kind == "ping":
        manager.offer(client, encode("pong", {"timestamp": now_iso()}))
    elif kind in ("subscribe_event", "unsubscribe_event"):
        event_id = message.get("eventId", (message.get("data") or {}).get("eventId"))
        if not isinstance(event_id, int) or isinstance(event_id, bool) or event_id < 1:
            manager.offer(client, error("INVALID_EVENT_ID", "eventId must be an integer ≥ 1"))
        elif kind == "subscribe_event":
            await subscribe(manager, client, event_id)
        else:
            unsubscribe(manager, client, event_id)
    elif kind == "get_stats":
        manager.offer(client, encode("stats", stats(manager, client)))
    elif kind == "auth":
        manager.offer(client, error("ALREADY_AUTHENTICATED", "This connection is signed in"))
    else:
        manager.offer(client, error("UNKNOWN_TYPE", f"Unknown message type: {kind!r}"))


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
