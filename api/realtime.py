"""Live updates: the WebSocket clients of one API instance (protocol in docs/websockets.md).

The instance's one Redis subscription (``api.pubsub.Hub``) calls ``ConnectionManager.dispatch``
with every message. Dispatch never waits on a socket: it puts the message, encoded once, into the
bounded queue of each socket that should see it: event messages to that event's subscribers,
``booking_status`` to the owner's sockets only.

Per socket, a receiver (client commands), a sender (drains the queue) and a heartbeat run in one
task group, so a disconnect, a failed send or a drop ends all three.

Slow clients: when a socket's queue is full the client is dropped (close 1013, "try again later")
rather than skipped ahead. A client that reconnects starts again from a snapshot, which the
protocol needs anyway, and a ``booking_status`` is never silently lost on a connection that
stays open. A single send stuck for ``WS_SEND_TIMEOUT`` drops the client the same way.

Snapshots are read from PostgreSQL in the threadpool, one short session each; no socket holds a
DB connection. Messages for an event that arrive while its snapshot is being read are held and
only those newer than the snapshot follow it, so each client sees one ordered stream per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import anyio
from fastapi import WebSocket
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect, WebSocketDisconnected

from api.pubsub import Hub, within
from common.db import session_scope
from common.errors import InvalidToken
from common.events import service as events_service
from common.pubsub import encode, now_iso
from common.security import read_access_token
from common.settings import Settings
from common.users import service as users_service

logger = logging.getLogger(__name__)

AUTH_TIMEOUT = 5.0  # seconds to send {"type": "auth"} when the URL carries no token
CLOSE_TIMEOUT = 2.0
MAX_CLIENT_MESSAGE = 4096  # characters; commands are tiny

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013


class _Close:
    """Queued after the last message on shutdown: the sender stops there and the socket closes."""


CLOSE = _Close()


def _error(code: str, message: str, **extra: Any) -> str:
    return encode("error", {"code": code, "message": message, **extra})


def _snapshot(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {**snapshot, "timestamp": now_iso()}


@dataclass(eq=False)
class Client:
    websocket: WebSocket
    user_id: int
    expires_at: datetime  # the token's; the socket closes then (1008) and the client signs in again
    queue: asyncio.Queue[str | _Close]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    events: set[int] = field(default_factory=set)
    # Event id -> (version, text) of messages held while its snapshot is read.
    held: dict[int, list[tuple[int | None, str]]] = field(default_factory=dict)
    scope: anyio.CancelScope | None = None
    close_code: int | None = None
    close_reason: str = ""
    disconnected: bool = False

    def end(self, code: int, reason: str) -> None:
        """Stop this socket's tasks now and close it with ``code``."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        if self.scope is not None:
            self.scope.cancel()


class ConnectionManager:
    def __init__(
        self, settings: Settings, session_factory: sessionmaker[Session], hub: Hub
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.hub = hub
        self.clients: dict[str, Client] = {}
        self.by_event: dict[int, set[Client]] = defaultdict(set)
        self.by_user: dict[int, set[Client]] = defaultdict(set)
        self.dropped = 0  # clients dropped for not keeping up, since start
        self.resyncs = 0
        self.closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    # ------------------------------------------------------------ fan-out (from the Hub)

    def dispatch(self, kind: str, ident: int, message: dict[str, Any]) -> None:
        """Hub listener: route one pub/sub message. Never awaits a socket."""
        if kind == "resync":
            self._spawn(self.resync())
            return
        if kind == "event":
            subscribers = self.by_event.get(ident)
            if not subscribers:
                return
            text = json.dumps(message, separators=(",", ":"), default=str)
            version = message.get("data", {}).get("version")
            for client in list(subscribers):
                self._deliver_event(client, ident, version, text)
            if message.get("type") == "event_deleted":
                for client in list(subscribers):
                    self._unsubscribe(client, ident)
        elif kind == "user" and message.get("type") == "booking_status":
            owners = self.by_user.get(ident)
            if not owners:
                return
            text = json.dumps(message, separators=(",", ":"), default=str)
            for client in list(owners):
                self._offer(client, text)

    def _deliver_event(self, client: Client, event_id: int, version: int | None, text: str) -> None:
        held = client.held.get(event_id)
        if held is None or version is None:
            self._offer(client, text)
            return
        held.append((version, text))
        if len(held) > self.settings.WS_QUEUE_SIZE:
            self._drop(client)

    def _offer(self, client: Client, item: str | _Close) -> bool:
        try:
            client.queue.put_nowait(item)
            return True
        except asyncio.QueueFull:
            self._drop(client)
            return False

    def _drop(self, client: Client) -> None:
        if client.close_code is None:
            self.dropped += 1
            logger.warning("dropping websocket client %s: not keeping up", client.id)
        client.end(CLOSE_TRY_AGAIN, "too slow: message queue overflowed")

    # ------------------------------------------------------------ subscriptions and snapshots

    async def _snapshots(self, event_ids: Collection[int]) -> dict[int, dict[str, Any]]:
        def read() -> dict[int, dict[str, Any]]:
            with session_scope(self.session_factory) as session:
                rows = events_service.seat_snapshots(session, event_ids)
            return {r.event_id: r.model_dump(by_alias=True) for r in rows}

        return await run_in_threadpool(read)

    async def subscribe(self, client: Client, event_id: int) -> None:
        if event_id not in client.events:
            if len(client.events) >= self.settings.WS_MAX_SUBSCRIPTIONS:
                self._offer(
                    client,
                    _error(
                        "SUBSCRIPTION_LIMIT",
                        f"At most {self.settings.WS_MAX_SUBSCRIPTIONS} events per connection",
                        eventId=event_id,
                    ),
                )
                return
            client.events.add(event_id)
            self.by_event[event_id].add(client)
        # Subscribed before the snapshot is read, so nothing published in between is missed.
        client.held.setdefault(event_id, [])
        snapshots = await self._snapshots([event_id])
        held = client.held.pop(event_id, [])
        if event_id not in client.events:  # deleted meanwhile; event_deleted is already queued
            return
        snapshot = snapshots.get(event_id)
        if snapshot is None:
            self._unsubscribe(client, event_id)
            self._offer(client, _error("EVENT_NOT_FOUND", "Event not found", eventId=event_id))
            return
        if self._offer(client, encode("subscribed", _snapshot(snapshot))):
            self._release(client, held, snapshot["version"])

    def _release(self, client: Client, held: list[tuple[int | None, str]], version: int) -> None:
        for held_version, text in held:
            if held_version is None or held_version > version:
                if not self._offer(client, text):
                    return

    def unsubscribe(self, client: Client, event_id: int) -> None:
        self._unsubscribe(client, event_id)
        self._offer(client, encode("unsubscribed", {"eventId": event_id, "timestamp": now_iso()}))

    def _unsubscribe(self, client: Client, event_id: int) -> None:
        client.events.discard(event_id)
        client.held.pop(event_id, None)
        subscribers = self.by_event.get(event_id)
        if subscribers is not None:
            subscribers.discard(client)
            if not subscribers:
                del self.by_event[event_id]

    async def resync(self) -> None:
        """After the Hub's subscription came back: whatever was published while it was down is
        lost, so every client gets fresh snapshots of its events in one ``resync`` message."""
        self.resyncs += 1
        clients = list(self.clients.values())
        wanted: set[int] = set()
        for client in clients:
            for event_id in client.events:
                client.held.setdefault(event_id, [])
            wanted |= client.events
        try:
            snapshots = await self._snapshots(wanted)
        except Exception:
            logger.exception("resync: cannot read snapshots; asking clients to reconnect")
            for client in clients:
                client.end(CLOSE_TRY_AGAIN, "resync failed")
            return
        for client in clients:
            if client.id not in self.clients:
                continue
            fresh: list[dict[str, Any]] = []
            releases: list[tuple[list[tuple[int | None, str]], int]] = []
            for event_id in sorted(client.events):
                held = client.held.pop(event_id, [])
                snapshot = snapshots.get(event_id)
                if snapshot is None:
                    self._unsubscribe(client, event_id)
                    deleted = {"eventId": event_id, "timestamp": now_iso()}
                    self._offer(client, encode("event_deleted", deleted))
                    continue
                fresh.append(snapshot)
                releases.append((held, snapshot["version"]))
            if self._offer(client, encode("resync", {"events": fresh, "timestamp": now_iso()})):
                for held, version in releases:
                    self._release(client, held, version)

    # ------------------------------------------------------------ one socket

    def origin_allowed(self, websocket: WebSocket) -> bool:
        origin = websocket.headers.get("origin")
        if origin is None:  # not a browser; browsers always send it
            return True
        allowed = self.settings.CORS_ORIGINS
        if "*" in allowed or origin in allowed:
            return True
        # The API's own page (/live) is same-origin wherever the API is served.
        return urlsplit(origin).netloc == websocket.headers.get("host")

    async def _authenticate(
        self, websocket: WebSocket, token: str | None
    ) -> tuple[int, datetime] | str:
        """The user id and the token's expiry, or the reason to close with 1008."""
        if token is None:
            with anyio.move_on_after(AUTH_TIMEOUT):
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return "disconnected"
                try:
                    first = json.loads(message.get("text") or "")
                except ValueError:
                    first = None
                if not isinstance(first, dict) or first.get("type") != "auth":
                    return "authentication required"
                candidate = first.get("token") or (first.get("data") or {}).get("token")
                if not isinstance(candidate, str):
                    return "authentication required"
                token = candidate
            if token is None:
                return "authentication timeout"
        try:
            user_id, expires_at = read_access_token(token, self.settings)
        except InvalidToken:
            return "invalid or expired token"

        def active() -> bool:
            with session_scope(self.session_factory) as session:
                try:
                    users_service.get_active(session, user_id)
                except InvalidToken:
                    return False
            return True

        if not await run_in_threadpool(active):
            return "invalid or expired token"
        return user_id, expires_at

    async def serve(self, websocket: WebSocket, token: str | None, event_id: int | None) -> None:
        if not self.origin_allowed(websocket):
            await websocket.close(code=CLOSE_POLICY)  # before accept: the handshake gets a 403
            return
        await websocket.accept()
        if self.closing:
            await websocket.close(code=CLOSE_GOING_AWAY, reason="server shutting down")
            return
        who = await self._authenticate(websocket, token)
        if isinstance(who, str):
            if who != "disconnected":
                await websocket.close(code=CLOSE_POLICY, reason=who)
            return
        user_id, expires_at = who
        client = Client(
            websocket, user_id, expires_at, asyncio.Queue(maxsize=self.settings.WS_QUEUE_SIZE)
        )
        self._register(client)
        try:
            established = {"clientId": client.id, "eventId": event_id, "timestamp": now_iso()}
            self._offer(client, encode("connection_established", established))
            async with anyio.create_task_group() as tg:
                client.scope = tg.cancel_scope
                if client.close_code is not None:  # closed before the group started
                    tg.cancel_scope.cancel()
                tg.start_soon(self._receive, client)
                tg.start_soon(self._send, client)
                tg.start_soon(self._heartbeat, client)
                tg.start_soon(self._expire, client)
                if event_id is not None:
                    tg.start_soon(self.subscribe, client, event_id)
        finally:
            self._unregister(client)
            if client.close_code is not None and not client.disconnected:
                with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                    with contextlib.suppress(Exception):
                        await websocket.close(code=client.close_code, reason=client.close_reason)

    def _register(self, client: Client) -> None:
        self.clients[client.id] = client
        self.by_user[client.user_id].add(client)
        self._idle.clear()

    def _unregister(self, client: Client) -> None:
        self.clients.pop(client.id, None)
        for event_id in list(client.events):
            self._unsubscribe(client, event_id)
        owners = self.by_user.get(client.user_id)
        if owners is not None:
            owners.discard(client)
            if not owners:
                del self.by_user[client.user_id]
        if not self.clients:
            self._idle.set()

    async def _receive(self, client: Client) -> None:
        try:
            while True:
                message = await client.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    client.disconnected = True
                    return
                await self._handle(client, message.get("text"))
        except (WebSocketDisconnect, WebSocketDisconnected):
            client.disconnected = True
        finally:
            if client.scope is not None:
                client.scope.cancel()

    async def _send(self, client: Client) -> None:
        try:
            while True:
                item = await client.queue.get()
                if isinstance(item, _Close):
                    return
                with anyio.fail_after(self.settings.WS_SEND_TIMEOUT):
                    await client.websocket.send_text(item)
        except TimeoutError:
            self._drop(client)
        except (WebSocketDisconnect, WebSocketDisconnected):
            client.disconnected = True
        finally:
            if client.scope is not None:
                client.scope.cancel()

    async def _heartbeat(self, client: Client) -> None:
        # Lets a client notice a silent server (browsers never see protocol pings); a client
        # that stops reading fills its queue with these and is dropped.
        while True:
            await anyio.sleep(self.settings.WS_HEARTBEAT_INTERVAL)
            self._offer(client, encode("heartbeat", {"timestamp": now_iso()}))

    async def _expire(self, client: Client) -> None:
        # A token is good until its exp, on a socket as on a request: the client reconnects
        # with a fresh one and starts again from snapshots, as after any reconnect.
        await anyio.sleep(max(0.0, (client.expires_at - datetime.now(UTC)).total_seconds()))
        client.end(CLOSE_POLICY, "token expired")

    async def _handle(self, client: Client, text: str | None) -> None:
        if text is None:
            self._offer(client, _error("INVALID_MESSAGE", "Send JSON text frames"))
            return
        if len(text) > MAX_CLIENT_MESSAGE:
            self._offer(client, _error("MESSAGE_TOO_LARGE", "Message too large"))
            return
        try:
            message = json.loads(text)
        except ValueError:
            self._offer(client, _error("INVALID_JSON", "Message is not valid JSON"))
            return
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "ping":
            self._offer(client, encode("pong", {"timestamp": now_iso()}))
        elif kind in ("subscribe_event", "unsubscribe_event"):
            event_id = message.get("eventId", (message.get("data") or {}).get("eventId"))
            if not isinstance(event_id, int) or isinstance(event_id, bool) or event_id < 1:
                self._offer(client, _error("INVALID_EVENT_ID", "eventId must be an integer ≥ 1"))
            elif kind == "subscribe_event":
                await self.subscribe(client, event_id)
            else:
                self.unsubscribe(client, event_id)
        elif kind == "get_stats":
            self._offer(client, encode("stats", self.stats(client)))
        elif kind == "auth":
            self._offer(client, _error("ALREADY_AUTHENTICATED", "This connection is signed in"))
        else:
            self._offer(client, _error("UNKNOWN_TYPE", f"Unknown message type: {kind!r}"))

    def stats(self, client: Client) -> dict[str, Any]:
        return {
            "clientId": client.id,
            "userId": client.user_id,
            "subscriptions": sorted(client.events),
            "maxSubscriptions": self.settings.WS_MAX_SUBSCRIPTIONS,
            "queueLimit": self.settings.WS_QUEUE_SIZE,
            "connections": len(self.clients),
            "subscribers": {str(e): len(self.by_event.get(e, ())) for e in sorted(client.events)},
            "queued": sum(c.queue.qsize() for c in self.clients.values()),
            "droppedClients": self.dropped,
            "redisConnected": self.hub.connected.is_set(),
            "resyncs": self.resyncs,
            "timestamp": now_iso(),
        }

    # ------------------------------------------------------------ shutdown

    def begin_close(
        self, code: int = CLOSE_GOING_AWAY, reason: str = "server shutting down"
    ) -> None:
        """Send each socket what it has queued, then close it with ``code``."""
        self.closing = True
        for client in list(self.clients.values()):
            if client.close_code is None:
                client.close_code, client.close_reason = code, reason
            if not self._offer(client, CLOSE):
                client.end(code, reason)

    async def drain(self, timeout: float) -> None:
        """Close every socket as ``begin_close`` does and wait, at most ``timeout``, until all
        are gone."""
        self.begin_close()
        await within(timeout, self._idle.wait())

    async def close_all(self, timeout: float = 5.0) -> None:
        await self.drain(timeout)
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def close_on_signals(manager: ConnectionManager) -> Callable[[], None]:
    """Close every socket with 1001 as soon as SIGTERM or SIGINT arrives, then let the server's
    own handler run.

    uvicorn closes open WebSockets itself, with 1012, as soon as its handler has run, so the
    sockets are drained first (at most ``CLOSE_TIMEOUT``): chaining the handlers at once let
    uvicorn's 1012 overtake our 1001 on a loaded machine. Returns a function that puts the
    previous handlers back.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # e.g. TestClient: no signals here; lifespan shutdown closes sockets
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}

    async def drain_then_chain(signum: int, frame: Any) -> None:
        try:
            await manager.drain(CLOSE_TIMEOUT)
        finally:
            previous[signum](signum, frame)

    def handler(signum: int, frame: Any) -> None:
        loop.call_soon_threadsafe(lambda: manager._spawn(drain_then_chain(signum, frame)))

    for sig in (signal.SIGTERM, signal.SIGINT):
        # Only in front of a server's own handler: a default action must stay the default.
        if callable(signal.getsignal(sig)):
            previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, chained in previous.items():
            signal.signal(sig, chained)

    return restore
