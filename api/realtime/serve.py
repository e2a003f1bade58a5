"""One socket's life: checks, then a receiver (client commands) in one task group with a sender
(drains the queue, started when something is first queued) and the reads that memory cannot
answer (the user's places in line, a snapshot), so a disconnect, a failed send or a drop ends
them all. The heartbeat and the token's expiry are timers, and what memory answers (snapshot,
places) is written before the group starts: opening a socket costs one task. A single send
stuck for ``WS_SEND_TIMEOUT`` drops the client (close 1013)."""

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
from api.realtime.snapshots import finish_subscription, start_subscription
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
    loop = asyncio.get_running_loop()
    # Timers, not tasks: opening a socket stays cheap (a storm opens thousands at once).
    timers: list[asyncio.TimerHandle] = [
        loop.call_later(settings.WS_HEARTBEAT_INTERVAL, _heartbeat, manager, client),
        loop.call_later(
            max(0.0, (expires_at - datetime.now(UTC)).total_seconds()),
            client.end,
            CLOSE_POLICY,
            "token expired",
        ),
    ]
    client.timers = timers
    try:
        with track_websocket():
            established = {"clientId": client.id, "eventId": event_id, "timestamp": now_iso()}
            manager.offer(client, encode("connection_established", established))
            # What memory can answer is sent now; only a database read needs a task.
            places_known = positions.load_known(manager, client)
            answered = event_id is None or start_subscription(manager, client, event_id)
            async with anyio.create_task_group() as tg:
                client.scope = tg.cancel_scope
                if client.close_code is not None:  # closed before the group started
                    tg.cancel_scope.cancel()
                tg.start_soon(_receive, manager, client)

                def start_sender() -> None:
                    tg.start_soon(_send, manager, client)

                client.start_sender = start_sender
                if not client.queue.empty():  # queued before the group started
                    client.sender_started = True
                    start_sender()
                if not places_known:
                    tg.start_soon(positions.load, manager, client)
                if not answered:
                    assert event_id is not None
                    tg.start_soon(finish_subscription, manager, client, event_id)
    finally:
        client.start_sender = None  # the group is gone
        for timer in client.timers:
            timer.cancel()
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
    # Drains what could not be written at once (``ConnectionManager.offer``), in order.
    queue = client.queue
    try:
        while True:
            item = await queue.get()
            if isinstance(item, CloseMarker):
                return
            with anyio.fail_after(manager.settings.WS_SEND_TIMEOUT):
                await client.websocket.send_text(item)
            if queue.empty():
                client.busy = False  # the next message may be written at once again
    except TimeoutError:
        manager.drop(client)
    except (WebSocketDisconnect, WebSocketDisconnected):
        client.disconnected = True
    finally:
        if client.scope is not None:
            client.scope.cancel()


def _heartbeat(manager: ConnectionManager, client: Client) -> None:
    # Lets a client notice a silent server (browsers never see protocol pings); a client
    # that stops reading fills its buffer (or queue) with these and is dropped.
    if client.close_code is not None:
        return
    manager.offer(client, encode("heartbeat", {"timestamp": now_iso()}))
    loop = asyncio.get_running_loop()
    client.timers[0] = loop.call_later(
        manager.settings.WS_HEARTBEAT_INTERVAL, _heartbeat, manager, client
    )
