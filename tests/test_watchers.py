"""Watchers through a whole sale: every one ends on the database's seat count, whatever it
joined late or lost to a dead API process. Real uvicorn processes, a real worker, real Redis
and PostgreSQL; the watchers follow the client algorithm of docs/websockets.md."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import httpx
from sqlalchemy import Engine, text

from tests.conftest import ApiProcess
from tests.ws_support import HANG_GUARD, LiveClient

SEAT_MESSAGES = ("booking_created", "booking_cancelled", "seat_update", "line_update")
CAPACITY = 120
BUYERS = 20
REQUESTS_PER_BUYER = 5  # of 2 seats each: 200 seats asked for 120, so the sale sells out
WATCHERS_PER_WAVE = 6


def order(data: dict[str, Any]) -> tuple[int, int]:
    """(version, requests that left the line): the order docs/websockets.md promises."""
    line = data.get("line")
    departed = line["through"] + len(line["gone"]) if line else -1
    return data["version"], departed


class Watcher:
    """One client following one event across its reconnects; ``connections`` keeps each
    socket's messages and ``known`` applies the client algorithm to all of them."""

    def __init__(self, event_id: int, token: str) -> None:
        self.event_id, self.token = event_id, token
        self.connections: list[LiveClient] = []
        self.urls: list[str] = []  # the server of each connection

    async def connect(self, ws_url: str) -> None:
        client = await LiveClient.open(f"{ws_url}/ws/events/{self.event_id}", self.token)
        self.connections.append(client)
        self.urls.append(ws_url)
        await client.first("subscribed", eventId=self.event_id)

    @property
    def current(self) -> LiveClient:
        return self.connections[-1]

    def known(self) -> dict[str, Any] | None:
        """The client algorithm (docs/websockets.md) over every message received so far."""
        known: dict[str, Any] | None = None
        for client in self.connections:
            for message in client.messages:
                data = message.get("data", {})
                if data.get("eventId") != self.event_id:
                    continue
                if message["type"] == "subscribed":
                    if known is None or data["version"] >= known["version"]:
                        known = data
                elif message["type"] in SEAT_MESSAGES:
                    if known is None or data["version"] > known["version"]:
                        known = data
        return known

    def assert_ordered_after_each_snapshot(self) -> None:
        for client in self.connections:
            keys: list[tuple[int, int]] = []
            for message in client.messages:
                data = message.get("data", {})
                if message["type"] == "subscribed":
                    keys = [order(data)]
                elif message["type"] in SEAT_MESSAGES:
                    keys.append(order(data))
            # Nothing at or below the snapshot, nothing repeated, nothing older.
            assert all(a < b for a, b in zip(keys, keys[1:], strict=False)), keys

    async def close(self) -> None:
        for client in self.connections:
            if not client.done:
                await client.close()


def final_seats(engine: Engine, event_id: int) -> dict[str, int]:
    with engine.connect() as conn:
        seats, version = conn.execute(
            text("SELECT available_seats, version FROM events WHERE id = :id"), {"id": event_id}
        ).one()
    return {"availableSeats": seats, "version": version}


def undecided(engine: Engine, event_id: int) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT count(*) FROM bookings WHERE event_id = :id AND status = 'pending'"),
            {"id": event_id},
        ).scalar_one()


async def request_seats(http: httpx.AsyncClient, token: str, event_id: int) -> None:
    response = await http.post(
        "/api/bookings",
        json={"eventId": event_id, "quantity": 2},
        headers={"Authorization": f"Bearer {token}"},
    )
    # Accepted, or refused at once because the event is already sold out.
    assert response.status_code in (202, 409), response.text


def test_every_watcher_ends_on_the_final_seat_count_despite_late_joins_and_a_dead_process(
    engine, worker, make_user, make_event, token_for
):
    event = make_event(capacity=CAPACITY, max_per_user=2 * REQUESTS_PER_BUYER)
    buyers = [token_for(make_user()) for _ in range(BUYERS)]
    watcher_tokens = [token_for(make_user()) for _ in range(3 * WATCHERS_PER_WAVE)]
    # One process takes the bookings; two others hold only sockets, and one of them dies.
    intake = ApiProcess("api-sale-intake").start()
    doomed = ApiProcess("api-sale-ws-doomed").start()
    survivor = ApiProcess("api-sale-ws").start()
    processes = [intake, doomed, survivor]

    async def wave(http: httpx.AsyncClient, requests: int) -> None:
        await asyncio.gather(
            *(request_seats(http, buyers[i % BUYERS], event.id) for i in range(requests))
        )

    async def decided() -> None:
        async with asyncio.timeout(HANG_GUARD):
            while undecided(engine, event.id):
                await asyncio.sleep(0.1)

    async def scenario() -> None:
        watchers = [Watcher(event.id, t) for t in watcher_tokens]
        early, late, reconnecting = (
            watchers[:WATCHERS_PER_WAVE],
            watchers[WATCHERS_PER_WAVE : 2 * WATCHERS_PER_WAVE],
            watchers[2 * WATCHERS_PER_WAVE :],
        )
        for i, watcher in enumerate(early):
            await watcher.connect((doomed if i % 2 else survivor).ws_url)
        total = BUYERS * REQUESTS_PER_BUYER
        async with httpx.AsyncClient(base_url=intake.url, timeout=60) as http:
            await wave(http, total // 3)
            # Mid-sale: the first third is in the queue or decided, and more watchers join.
            for i, watcher in enumerate(late):
                await watcher.connect((doomed if i % 2 else survivor).ws_url)
            for watcher in reconnecting:
                await watcher.connect(doomed.ws_url)
            sale = asyncio.create_task(wave(http, total - total // 3))
            await asyncio.to_thread(doomed.stop, signal.SIGKILL)
            # The dead process's watchers reconnect to the other one (a fresh snapshot each).
            for watcher in watchers:
                if watcher.urls[-1] == doomed.ws_url:
                    await watcher.current.wait_closed()
                    await watcher.connect(survivor.ws_url)
            await sale
        await decided()
        final = final_seats(engine, event.id)
        assert final["availableSeats"] == 0  # the sale sold out, with requests refused after

        for watcher in watchers:

            def caught_up(_: object, w: Watcher = watcher) -> bool:
                known = w.known()
                return known is not None and known["version"] >= final["version"]

            await watcher.current.wait_for(caught_up, "the final seat state")
            known = watcher.known()
            assert known is not None
            assert (known["availableSeats"], known["version"]) == (0, final["version"])
            watcher.assert_ordered_after_each_snapshot()
        assert sum(len(w.connections) > 1 for w in watchers) >= WATCHERS_PER_WAVE
        for watcher in watchers:
            await watcher.close()

    try:
        asyncio.run(scenario())
    finally:
        for proc in processes:
            proc.stop()
