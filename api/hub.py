"""The API's one Redis subscription, shared by every socket and waiter of this process.

Each API instance subscribes once to the event and user patterns and fans messages out in
memory: to requests waiting for a decision (``Prefer: wait``) and to listeners such as the
WebSocket manager. When the subscription breaks it reconnects with backoff and tells listeners
to resync, since messages published meanwhile are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from common.bookings.models import IN_LINE, Booking
from common.channels import control_channel, decisions_channel, events_pattern, parse_channel

logger = logging.getLogger(__name__)

# (channel kind, id, message): ("event", 7, {...}) or ("user", 3, {...}); ("resync", 0, {}) after a
# reconnect.
Listener = Callable[[str, int, dict[str, Any]], Awaitable[None] | None]

STOP_TIMEOUT = 2.0
POLL_INTERVAL = 1.0  # how often the subscription loop looks whether it should stop


async def within(seconds: float, awaitable: Awaitable[Any]) -> bool:
    """Run ``awaitable`` for at most ``seconds``; False if it had to be abandoned.

    Unlike ``asyncio.timeout``, this returns on time even when the awaited code swallows its
    cancellation, which redis-py can do when a cancel lands mid-read (redis/redis-py#2028,
    #2551): a TestClient's shutdown hung forever on exactly that under CPU load.
    """
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if done:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            task.result()
        return True
    task.cancel()
    return False


class Hub:
    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._waiters: dict[str, set[asyncio.Future[dict[str, Any]]]] = defaultdict(set)
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.connected = asyncio.Event()
        self.reconnects = 0

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="redis-hub")

    async def stop(self) -> None:
        """End the subscription on time. The loop checks ``_stopping`` at least every
        ``POLL_INTERVAL``, so it ends even when redis-py swallows the cancellation (or a
        listener does); a task still running after ``STOP_TIMEOUT`` is abandoned."""
        self._stopping = True
        task = self._task
        if task is None:
            return
        task.cancel()
        if not await within(STOP_TIMEOUT, asyncio.shield(task)):
            logger.error("redis subscription ignored its cancellation; abandoning it")

    async def accepted(self, booking: Booking) -> None:
        """This process's intake stored ``booking``: listeners hear it as a ``booking_accepted``
        for its owner (in-process only, never published), so a signed-in owner's sockets here
        follow its place in line from the start."""
        if booking.status not in IN_LINE:  # an idempotent replay of a decided one
            return
        data = {
            "bookingId": booking.booking_id,
            "eventId": booking.event_id,
            "queueSeq": booking.queue_seq,
            "status": booking.status,
        }
        await self._notify("user", booking.user_id, {"type": "booking_accepted", "data": data})

    @contextlib.asynccontextmanager
    async def waiter(self, booking_id: str) -> AsyncIterator[asyncio.Future[dict[str, Any]]]:
        """A future resolved with the next ``booking_status`` message for the booking."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[booking_id].add(future)
        try:
            yield future
        finally:
            waiters = self._waiters.get(booking_id)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiters[booking_id]

    async def _run(self) -> None:
        backoff = 0.1
        first = True
        while not self._stopping:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(events_pattern())
                await pubsub.subscribe(control_channel(), decisions_channel())
                self.connected.set()
                if not first:
                    self.reconnects += 1
                    logger.info("redis subscription restored; resyncing clients")
                    await self._notify("resync", 0, {})
                first = False
                backoff = 0.1
                # Not ``listen()``: a read that never ends would leave ``_stopping`` unseen.
                while not self._stopping:
                    message = await pubsub.get_message(timeout=POLL_INTERVAL)
                    if message is not None and message["type"] in ("pmessage", "message"):
                        await self._dispatch(message["channel"], message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.connected.clear()  # now, not after the backoff below
                if self._stopping:
                    return
                logger.warning("redis subscription lost (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                self.connected.clear()
                await close_pubsub(pubsub)

    async def _dispatch(self, channel: str, raw: str) -> None:
        decisions = channel == decisions_channel()
        parsed = None if decisions else parse_channel(channel)
        if parsed is None and not decisions:
            return
        try:
            message = json.loads(raw)
        except ValueError:
            logger.warning("dropping malformed message on %s", channel)
            return
        if decisions:
            # A batch's decisions: each to its waiters and, as booking_status, to its owner.
            for status in message.get("data", {}).get("decisions", ()):
                user_id = status.pop("userId", None)
                for future in self._waiters.get(status.get("bookingId"), ()):
                    if not future.done():
                        future.set_result(status)
                if isinstance(user_id, int):
                    await self._notify("user", user_id, {"type": "booking_status", "data": status})
            return
        kind, ident = parsed  # type: ignore[misc]
        await self._notify(kind, ident, message)

    async def _notify(self, kind: str, ident: int, message: dict[str, Any]) -> None:
        for listener in self._listeners:
            try:
                result = listener(kind, ident, message)
                if result is not None:
                    await result
            except Exception:
                logger.exception("pub/sub listener failed")


async def close_pubsub(pubsub: aioredis.client.PubSub, timeout: float = STOP_TIMEOUT) -> None:
    """Close a subscription without hanging: redis-py's ``aclose`` can wait forever in
    ``wait_closed`` (redis/redis-py#3941), which stalled the API's shutdown; past the timeout
    the connection is dropped without waiting."""
    if not await within(timeout, pubsub.aclose()):
        connection = pubsub.connection
        if connection is not None:
            await within(timeout, connection.disconnect(nowait=True))
