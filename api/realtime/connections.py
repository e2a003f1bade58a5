"""The sockets of this API instance and their queues.

Nothing here waits on a socket: a message for a socket with nothing of its own queued is framed
and written to its transport at once (``api.realtime.frames``); otherwise it goes into the
socket's bounded queue, encoded once, and the socket's sender (``api.realtime.serve``) drains
it. When a queue (or the transport's buffer) is full the client is dropped (close 1013, "try
again later") rather than skipped ahead: a client that reconnects starts again from a
snapshot, which the protocol needs anyway, and a ``booking_status`` is never silently lost on
a connection that stays open.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
from fastapi import WebSocket
from sqlalchemy.orm import Session, sessionmaker

from api.hub import Hub
from api.realtime.active import ActiveUsers
from api.realtime.coalesce import Coalescer, Key
from api.realtime.frames import text_frame
from api.realtime.positions import Positions
from common.pubsub import encode
from common.settings import Settings

logger = logging.getLogger(__name__)

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013


class CloseMarker:
    """Queued after the last message on shutdown: the sender stops there and the socket closes."""


CLOSE = CloseMarker()


def error(code: str, message: str, **extra: Any) -> str:
    """An ``error`` message for one client (codes in docs/websockets.md)."""
    return encode("error", {"code": code, "message": message, **extra})


@dataclass(eq=False)
class Client:
    websocket: WebSocket
    user_id: int
    expires_at: datetime  # the token's; the socket closes then (1008) and the client signs in again
    queue: asyncio.Queue[str | CloseMarker]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # Whether sign-in found the user's requests in a line; None: not looked at (checked lately).
    waits: bool | None = None
    events: set[int] = field(default_factory=set)
    # Event id -> (order key, text) of messages held while its snapshot is read.
    held: dict[int, list[tuple[Key | None, str]]] = field(default_factory=dict)
    # Event id -> the order key of its snapshot: nothing at or below it follows.
    floor: dict[int, Key] = field(default_factory=dict)
    # Set where frames may be written straight to the socket (api.realtime.frames).
    transport: asyncio.WriteTransport | None = None
    # Something is queued or being written by the sender: what comes next queues behind it.
    busy: bool = False
    timers: list[asyncio.TimerHandle] = field(default_factory=list)  # heartbeat, expiry
    # Starts the sender task, set while the socket's task group runs; most sockets never
    # queue (their frames are written at once), so the task starts on the first queued item.
    start_sender: Callable[[], None] | None = None
    sender_started: bool = False
    scope: anyio.CancelScope | None = None
    close_code: int | None = None
    close_reason: str = ""
    disconnected: bool = False
    # Commands received in the current one-second window (api.realtime.commands.admit).
    window_start: float = 0.0
    window_count: int = 0

    def end(self, code: int, reason: str) -> None:
        """Stop this socket's tasks now and close it with ``code``."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        if self.scope is not None:
            self.scope.cancel()


def ready_transport(client: Client) -> asyncio.WriteTransport | None:
    """The socket's transport when a frame may be written to it at once (nothing of its own
    queued ahead, still open); None when the message must go through its queue."""
    transport = client.transport
    if client.busy or transport is None or client.close_code is not None or transport.is_closing():
        return None
    return transport


class ConnectionManager:
    """Who is connected and subscribed to what; the other modules act on it."""

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
        self.positions = Positions(self.to_user)
        self.active_users = ActiveUsers(settings.WS_USER_RECHECK)
        # Set by api.realtime.fanout: seat state per event, coalesced, and the snapshots.
        self.coalescer: Coalescer
        self.direct_writes = 0  # frames written straight to a transport, since start
        self.closing = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.idle = asyncio.Event()
        self.idle.set()

    def offer(self, client: Client, item: str | CloseMarker) -> bool:
        """Send ``item`` to ``client``: written at once if nothing is ahead of it (nothing
        queued, nothing unsent in the transport), else queued; False (and the client dropped)
        if its queue is full. A slow reader's own messages thus wait in its queue, bounded
        by ``WS_QUEUE_SIZE`` and ``WS_SEND_TIMEOUT``."""
        if isinstance(item, str):
            transport = ready_transport(client)
            if transport is not None and not transport.get_write_buffer_size():
                transport.write(text_frame(item))
                self.direct_writes += 1
                return True
        try:
            client.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.drop(client)
            return False
        client.busy = True
        if not client.sender_started and client.start_sender is not None:
            client.sender_started = True
            client.start_sender()
        return True

    def deliver(self, client: Client, text: str, frame: bytes) -> bool:
        """``offer``, with ``frame`` (the same message, framed once for every socket) for a
        socket that can take it at once."""
        transport = ready_transport(client)
        if transport is None:
            return self.offer(client, text)
        return self._write(client, transport, frame)

    def _write(self, client: Client, transport: asyncio.WriteTransport, frame: bytes) -> bool:
        if transport.get_write_buffer_size() > self.settings.WS_WRITE_BUFFER:
            self.drop(client)  # the kernel's buffer and ours are full: it is not reading
            return False
        transport.write(frame)
        self.direct_writes += 1
        return True

    def drop(self, client: Client) -> None:
        if client.close_code is None:
            self.dropped += 1
            logger.warning("dropping websocket client %s: not keeping up", client.id)
        client.end(CLOSE_TRY_AGAIN, "too slow: message queue overflowed")

    def to_user(self, user_id: int, text: str) -> None:
        """Queue ``text`` for each of the user's sockets."""
        for client in list(self.by_user.get(user_id, ())):
            self.offer(client, text)

    def register(self, client: Client) -> None:
        self.clients[client.id] = client
        self.by_user[client.user_id].add(client)
        self.positions.signed_in(client.user_id)
        self.idle.clear()

    def unregister(self, client: Client) -> None:
        self.clients.pop(client.id, None)
        for event_id in list(client.events):
            self.forget(client, event_id)
        owners = self.by_user.get(client.user_id)
        if owners is not None:
            owners.discard(client)
            if not owners:
                del self.by_user[client.user_id]
                self.positions.signed_out(client.user_id)
        if not self.clients:
            self.idle.set()

    def forget(self, client: Client, event_id: int) -> None:
        """Unsubscribe ``client`` from ``event_id`` without telling it."""
        client.events.discard(event_id)
        client.held.pop(event_id, None)
        client.floor.pop(event_id, None)
        subscribers = self.by_event.get(event_id)
        if subscribers is not None:
            subscribers.discard(client)
            if not subscribers:
                del self.by_event[event_id]

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background; ``shutdown.close_all`` cancels what is left."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
