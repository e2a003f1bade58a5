"""Fan-out: the Hub's listener, routing each pub/sub message to the sockets that should see it.

Event messages go to that event's subscribers, ``booking_status`` to the owner's sockets only,
and ``resync`` (the Hub's subscription came back) to every client as fresh snapshots. The line
in event messages, the statuses and the bookings this instance accepted also feed the places in
line (``positions``), which send ``queue_position`` to owners. Dispatch never awaits a socket:
it only fills queues.
"""

from __future__ import annotations

import json
from typing import Any

from api.realtime import positions
from api.realtime.connections import Client, ConnectionManager
from api.realtime.snapshots import resync


def dispatch(manager: ConnectionManager, kind: str, ident: int, message: dict[str, Any]) -> None:
    """Hub listener: route one pub/sub message. Never awaits a socket."""
    if kind == "resync":
        manager.spawn(resync(manager))
        manager.spawn(positions.reload(manager))
        return
    if kind == "event":
        # Every event's messages reach this listener (the Hub subscribes to the pattern of all
        # event channels): the line they carry moves the places of connected users' bookings
        # whether or not any socket follows the event.
        manager.positions.on_event(ident, message)
        subscribers = manager.by_event.get(ident)
        if not subscribers:
            return
        text = json.dumps(message, separators=(",", ":"), default=str)
        version = message.get("data", {}).get("version")
        for client in list(subscribers):
            _deliver_event(manager, client, ident, version, text)
        if message.get("type") == "event_deleted":
            for client in list(subscribers):
                manager.forget(client, ident)
    elif kind == "user" and message.get("type") == "booking_status":
        owners = manager.by_user.get(ident)
        if not owners:
            return
        manager.positions.on_status(ident, message.get("data") or {})
        text = json.dumps(message, separators=(",", ":"), default=str)
        for client in list(owners):
            manager.offer(client, text)
    elif kind == "user" and message.get("type") == "booking_accepted":
        manager.positions.on_accepted(ident, message["data"])  # in-process, never relayed


def _deliver_event(
    manager: ConnectionManager, client: Client, event_id: int, version: int | None, text: str
) -> None:
    held = client.held.get(event_id)
    if held is None or version is None:
        manager.offer(client, text)
        return
    # Its snapshot is being read: held until then (api.realtime.snapshots).
    held.append((version, text))
    if len(held) > manager.settings.WS_QUEUE_SIZE:
        manager.drop(client)
