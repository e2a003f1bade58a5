"""The API's Redis subscription stops on time, even when a cancellation is swallowed.

redis-py can swallow a cancellation that lands mid-read (redis/redis-py#2028, #2551); under CPU
load a TestClient's shutdown then waited forever for the Hub's task. These tests stand in for
that with code of our own that swallows cancellation, against the real test Redis.
"""

from __future__ import annotations

import asyncio
from typing import Any

from api.hub import Hub, within
from common.channels import event_channel
from common.pubsub import publish
from common.redis_client import build_async_redis

HANG_GUARD = 60.0  # only so a broken run cannot hang; nothing here is timed


async def stubborn(release: asyncio.Event, cancels: list[int]) -> None:
    """Waits for ``release`` and ignores every cancellation meanwhile."""
    while not release.is_set():
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancels.append(1)


def test_within_gives_up_on_code_that_swallows_its_cancellation():
    async def scenario() -> None:
        release = asyncio.Event()
        cancels: list[int] = []
        task = asyncio.ensure_future(stubborn(release, cancels))
        try:
            async with asyncio.timeout(HANG_GUARD):
                assert await within(0.1, asyncio.shield(task)) is False
                assert await within(0.1, task) is False  # cancels it; the cancel is ignored
                assert await within(0.1, asyncio.shield(task)) is False
                assert cancels and not task.done()
        finally:
            release.set()  # a failed assertion must not leave a task nothing can cancel
        await task
        assert await within(HANG_GUARD, asyncio.sleep(0)) is True

    asyncio.run(scenario())


def test_hub_stops_when_its_task_ignores_the_cancellation(settings, redis_client):
    async def scenario() -> None:
        aredis = build_async_redis(settings)
        hub = Hub(aredis)
        release, seen = asyncio.Event(), asyncio.Event()
        cancels: list[int] = []

        async def listener(kind: str, ident: int, message: dict[str, Any]) -> None:
            seen.set()
            await stubborn(release, cancels)

        hub.add_listener(listener)
        await hub.start()
        try:
            await run(hub, release, cancels, seen)
        finally:
            release.set()
        await aredis.aclose()

    async def run(
        hub: Hub, release: asyncio.Event, cancels: list[int], seen: asyncio.Event
    ) -> None:
        async with asyncio.timeout(HANG_GUARD):
            await hub.connected.wait()
            while not seen.is_set():  # the listener is now holding the Hub's task
                publish(redis_client, event_channel(1), "seat_update", {"eventId": 1})
                await asyncio.sleep(0.05)
            await hub.stop()  # returns although the task ignored its cancel
            assert cancels
            # Once the listener lets go, the loop sees that the Hub is stopping and ends,
            # instead of reading (and reconnecting) forever.
            release.set()
            assert hub._task is not None
            await hub._task
            assert not hub.connected.is_set()

    asyncio.run(scenario())
