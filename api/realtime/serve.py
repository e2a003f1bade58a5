"""One socket's life: checks, then a receiver (client commands), a sender (drains the queue), a
heartbeat, the token's expiry and the first read of the user's places in line in one task group,
so a disconnect, a failed send or a drop ends them all. A single send stuck for
``WS_SEND_TIMEOUT`` drops the client (close 1013)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import anyio
from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketDisconnected

from api.metrics import track_websocket
from api.realtime import positions
from api.realtime.auth import authenticate, origin_allowed
from api.realtime.commands import admit, handle
from api.realtime.connections import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN,
    Client,
    CloseMarker,
    ConnectionManager,
)
from api.realtime.frames import transport_of
from api.realtime.snapshots import subscribe
from common.pubsub import encode, now_iso

CLOSE_TIMEOUT = 2.0


async def serve(
    manager: ConnectionManager, websocket: WebSocket, token: str | None, event_id: int | None
) -> None:
    settings = manager.settings
    if not origin_allowed(settings, websocket):
        await websocket.close(code=CLOSE_POLICY)  # before accept: the handshake gets a 403
        return
    await websocket.accept()
    if manager.closing:
        await websocket.close(code=CLOSE_GOING_AWAY, reason="server shutting down")
        return
    who = await authenticate(
        websocket, token, settings, manager.session_factory, manager.active_users
    )
    if isinstance(who, str):
        if who != "disconnected":
            await websocket.close(code=CLOSE_POLICY, reason=who)
        return
    user_id, expires_at, waits = who
    if len(manager.by_user.get(user_id, ())) >= settings.WS_MAX_PER_USER:
        # Checked and registered with no await between: the cap is exact.
        await websocket.close(code=CLOSE_TRY_AGAIN, reason="too many connections for this user")
        return
    client = Client(websocket, user_id, expires_at, asyncio.Queue(maxsize=settings.WS_QUEUE_SIZE))
    client.waits = waits
    client.transport = transport_of(websocket.scope)
    manager.register(client)
    try:
        with track_websocket():
            established = {"clientId": client.id, "eventId": event_id, "timestamp": now_iso()}
            manager.offer(client, encode("connection_established", established))
            async with anyio.create_task_group() as tg:
                client.scope = tg.cancel_scope
                if client.close_code is not None:  # closed before the group started
                    tg.cancel_scope.cancel()
                tg.start_soon(_receive, manager, client)
                tg.start_soon(_send, manager, client)
                tg.start_soon(_heartbeat, manager, client)
                tg.start_soon(_expire, client)
                tg.start_soon(positions.load, manager, client)
                if event_id is not None:
                    tg.start_soon(subscribe, manager, client, event_id)
    finally:
        manager.unregister(client)
        if client.close_code is not None and not client.disconnected:
            with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                with contextlib.suppress(Exception):
                    await websocket.close(code=client.close_code, reason=client.close_reason)


async def _receive(manager: ConnectionManager, client: Client) -> None:
    try:
        while True:
            message = await client.websocket.receive()
            if message["type"] == "websocket.disconnect":
                client.disconnected = True
                return
            if admit(manager, client):
                await handle(manager, client, message.get("text"))
    except (WebSocketDisconnect, WebSocketDisconnected):
        client.disconnected = True
    finally:
        if client.scope is not None:
            client.scope.cancel()


async def _send(manager: ConnectionManager, client: Client) -> None:
    try:
        while True:
            item = await client.queue.get()
            if isinstance(item, CloseMarker):
                return
            client.sending = True
            with anyio.fail_after(manager.settings.WS_SEND_TIMEOUT):
                await client.websocket.send_text(item)
            client.sending = False
    except TimeoutError:
        manager.drop(client)
    except (WebSocketDisconnect, WebSocketDisconnected):
        client.disconnected = True
    finally:
        if client.scope is not None:
            client.scope.cancel()


async def _heartbeat(manager: ConnectionManager, client: Client) -> None:
    # Lets a client notice a silent server (browsers never see protocol pings); a client
    # that stops reading fills its queue with these and is dropped.
    while True:
        await anyio.sleep(manager.settings.WS_HEARTBEAT_INTERVAL)
        manager.offer(client, encode("heartbeat", {"timestamp": now_iso()}))


async def _expire(client: Client) -> None:
    # A token is good until its exp, on a socket as on a request: the client reconnects
    # with a fresh one and starts again from snapshots, as after any reconnect.
    await anyio.sleep(max(0.0, (client.expires_at - datetime.now(UTC)).total_seconds()))
    client.end(CLOSE_POLICY, "token expired")
