"""Snapshots, and the order of messages around them.

Snapshots are read from PostgreSQL in the threadpool, one short session each; no socket holds a
DB connection. Messages for an event that arrive while its snapshot is being read are held
(``Client.held``) and only those newer than the snapshot follow it, so each client sees one
ordered stream per event. A resync does the same for every client at once.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from starlette.concurrency import run_in_threadpool

from api.realtime.connections import CLOSE_TRY_AGAIN, Client, ConnectionManager, error
from common.db import session_scope
from common.events import service as events_service
from common.pubsub import encode, now_iso

logger = logging.getLogger(__name__)


async def read_snapshots(
    manager: ConnectionManager, event_ids: Collection[int]
) -> dict[int, dict[str, Any]]:
    def read() -> dict[int, dict[str, Any]]:
        with session_scope(manager.session_factory) as session:
            rows = events_service.seat_snapshots(session, event_ids)
        return {r.event_id: r.model_dump(by_alias=True) for r in rows}

    return await run_in_threadpool(read)


def _stamped(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {**snapshot, "timestamp": now_iso()}


async def subscribe(manager: ConnectionManager, client: Client, event_id: int) -> None:
    settings = manager.settings
    if event_id not in client.events:
        if len(client.events) >= settings.WS_MAX_SUBSCRIPTIONS:
            manager.offer(
                client,
                error(
                    "SUBSCRIPTION_LIMIT",
                    f"At most {settings.WS_MAX_SUBSCRIPTIONS} events per connection",
                    eventId=event_id,
                ),
            )
            return
        client.events.add(event_id)
        manager.by_event[event_id].add(client)
    # Subscribed before the snapshot is read, so nothing published in between is missed.
    client.held.setdefault(event_id, [])
    snapshots = await read_snapshots(manager, [event_id])
    held = client.held.pop(event_id, [])
    if event_id not in client.events:  # deleted meanwhile; event_deleted is already queued
        return
    snapshot = snapshots.get(event_id)
    if snapshot is None:
        manager.forget(client, event_id)
        manager.offer(client, error("EVENT_NOT_FOUND", "Event not found", eventId=event_id))
        return
    if manager.offer(client, encode("subscribed", _stamped(snapshot))):
        _release(manager, client, held, snapshot["version"])


def _release(
    manager: ConnectionManager, client: Client, held: list[tuple[int | None, str]], version: int
) -> None:
    for held_version, text in held:
        if held_version is None or held_version > version:
            if not manager.offer(client, text):
                return


def unsubscribe(manager: ConnectionManager, client: Client, event_id: int) -> None:
    manager.forget(client, event_id)
    manager.offer(client, encode("unsubscribed", {"eventId": event_id, "timestamp": now_iso()}))


async def resync(manager: ConnectionManager) -> None:
    """After the Hub's subscription came back: whatever was published while it was down is
    lost, so every client gets fresh snapshots of its events in one ``resync`` message."""
    manager.resyncs += 1
    clients = list(manager.clients.values())
    wanted: set[int] = set()
    for client in clients:
        for event_id in client.events:
            client.held.setdefault(event_id, [])
        wanted |= client.events
    try:
        snapshots = await read_snapshots(manager, wanted)
    except Exception:
        logger.exception("resync: cannot read snapshots; asking clients to reconnect")
        for client in clients:
            client.end(CLOSE_TRY_AGAIN, "resync failed")
        return
    for client in clients:
        if client.id not in manager.clients:
            continue
        fresh: list[dict[str, Any]] = []
        releases: list[tuple[list[tuple[int | None, str]], int]] = []
        for event_id in sorted(client.events):
            held = client.held.pop(event_id, [])
            snapshot = snapshots.get(event_id)
            if snapshot is None:
                manager.forget(client, event_id)
                deleted = {"eventId": event_id, "timestamp": now_iso()}
                manager.offer(client, encode("event_deleted", deleted))
                continue
            fresh.append(snapshot)
            releases.append((held, snapshot["version"]))
        if manager.offer(client, encode("resync", {"events": fresh, "timestamp": now_iso()})):
            for held, version in releases:
                _release(manager, client, held, version)
