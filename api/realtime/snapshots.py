"""Snapshots, and the order of messages around them.

A snapshot comes from memory: the newest seat state this process has heard of the event (kept
by ``api.realtime.coalesce``), so opening a socket or subscribing costs no database read. Only
an event this process has heard nothing of since its subscription came up is read from
PostgreSQL, in the threadpool, once for every socket asking at the same time. Each socket then
gets only messages ordered after its snapshot (``Client.floor``): never the same version twice,
never an older one. Messages for an event that arrive while its snapshot is being read are
held (``Client.held``) and only those newer than the snapshot follow it. A resync reads every
followed event again for every client at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Any

from starlette.concurrency import run_in_threadpool

from api.realtime.coalesce import Key
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


def _key(snapshot: dict[str, Any]) -> Key:
    return snapshot["version"], -1, ""  # a database snapshot carries no line


_reads: dict[tuple[int, int], asyncio.Future[dict[str, Any] | None]] = {}


async def _read_one(manager: ConnectionManager, event_id: int) -> dict[str, Any] | None:
    """One database read per event however many sockets ask at once (a reconnect storm on an
    event nobody here has heard of yet); remembered as the event's state."""
    slot = (id(manager), event_id)
    pending = _reads.get(slot)
    if pending is not None:
        return await asyncio.shield(pending)
    future: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
    _reads[slot] = future
    try:
        snapshot = (await read_snapshots(manager, [event_id])).get(event_id)
        if snapshot is not None:
            now = asyncio.get_running_loop().time()
            manager.coalescer.read(event_id, _key(snapshot), snapshot, now)
        future.set_result(snapshot)
    except BaseException as exc:
        future.set_exception(exc)
        future.exception()  # read here, so an unawaited one is not reported
        raise
    finally:
        del _reads[slot]
    return snapshot


def start_subscription(manager: ConnectionManager, client: Client, event_id: int) -> bool:
    """Subscribe and answer from memory, with no await: True when answered (a snapshot, or
    refused); False when the snapshot must be read (``finish_subscription``)."""
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
            return True
        client.events.add(event_id)
        manager.by_event[event_id].add(client)
    now = asyncio.get_running_loop().time()
    known = manager.coalescer.snapshot(event_id, now, settings.SEAT_SNAPSHOT_MAX_AGE)
    if known is not None:
        # No await from here to the offer: every message after this one is newer.
        key, snapshot = known
        client.held.pop(event_id, None)
        client.floor[event_id] = key
        manager.offer(client, encode("subscribed", _stamped(snapshot)))
        return True
    # Subscribed before the snapshot is read, so nothing published in between is missed.
    client.held.setdefault(event_id, [])
    return False


async def subscribe(manager: ConnectionManager, client: Client, event_id: int) -> None:
    if not start_subscription(manager, client, event_id):
        await finish_subscription(manager, client, event_id)


async def finish_subscription(manager: ConnectionManager, client: Client, event_id: int) -> None:
    """The snapshot of an event this process has not heard of lately, read from PostgreSQL;
    the messages held meanwhile that are newer follow it."""
    try:
        read = await _read_one(manager, event_id)
    finally:
        held = client.held.pop(event_id, [])
    if event_id not in client.events:  # deleted meanwhile; event_deleted is already queued
        return
    if read is None:
        manager.forget(client, event_id)
        manager.offer(client, error("EVENT_NOT_FOUND", "Event not found", eventId=event_id))
        return
    key = _key(read)
    client.floor[event_id] = key
    if manager.offer(client, encode("subscribed", _stamped(read))):
        _release(manager, client, held, key)


def _release(
    manager: ConnectionManager, client: Client, held: list[tuple[Key | None, str]], floor: Key
) -> None:
    for held_key, text in held:
        if held_key is None or held_key > floor:
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
        releases: list[tuple[list[tuple[Key | None, str]], Key]] = []
        for event_id in sorted(client.events):
            held = client.held.pop(event_id, [])
            snapshot = snapshots.get(event_id)
            if snapshot is None:
                manager.forget(client, event_id)
                deleted = {"eventId": event_id, "timestamp": now_iso()}
                manager.offer(client, encode("event_deleted", deleted))
                continue
            fresh.append(snapshot)
            now = asyncio.get_running_loop().time()
            manager.coalescer.read(event_id, _key(snapshot), snapshot, now)
            client.floor[event_id] = max(client.floor.get(event_id, _key(snapshot)), _key(snapshot))
            releases.append((held, _key(snapshot)))
        if manager.offer(client, encode("resync", {"events": fresh, "timestamp": now_iso()})):
            for held, version in releases:
                _release(manager, client, held, version)
