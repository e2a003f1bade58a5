"""Live updates end to end: real uvicorn processes, a real worker, real Redis and PostgreSQL.

Each test drives WebSocket clients and the REST API of running API processes from one asyncio
loop; the worker decides the bookings and publishes, the API instances relay.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import Engine, text
from websockets.exceptions import InvalidStatus

from tests.conftest import ApiProcess
from tests.ws_support import SEAT_TYPES, LiveClient, book, small_buffer_socket


@pytest.fixture
def api(engine: Engine, worker: Any) -> Iterator[ApiProcess]:
    # One per test: each test empties the database and reuses event ids, which a process's
    # in-memory seat state (the snapshots, docs/websockets.md) would otherwise carry over.
    proc = ApiProcess("api-ws").start()
    yield proc
    proc.stop()


def seats_in_db(engine: Engine, event_id: int) -> dict[str, int]:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT available_seats, seat_capacity, version FROM events WHERE id = :id"),
            {"id": event_id},
        ).one()
    return {"availableSeats": row[0], "seatCapacity": row[1], "version": row[2]}


def assert_every_change_in_order(client: LiveClient, event_id: int, final_version: int) -> None:
    # Coalesced (docs/websockets.md): changes may be skipped, never repeated, reordered or the
    # last one hidden.
    versions = client.seat_versions(event_id)
    assert versions == sorted(set(versions)), versions
    assert versions[-1] == final_version, versions


# ---------------------------------------------------------------- fan-out across instances


def test_each_instance_relays_every_seat_change_made_through_the_other(
    engine, worker, make_user, make_event, token_for
):
    event = make_event(capacity=200, max_per_user=100)
    users = [make_user() for _ in range(4)]
    tokens = [token_for(u) for u in users]
    instances = [ApiProcess("api-a").start(), ApiProcess("api-b").start()]

    async def scenario() -> None:
        a, b = instances
        # One subscribes through the path, the other by message after first-message auth.
        on_a = await LiveClient.open(f"{a.ws_url}/ws/events/{event.id}", tokens[0])
        on_b = await LiveClient.open(f"{b.ws_url}/ws")
        await on_b.send("auth", token=tokens[1])
        await on_b.first("connection_established")
        await on_b.request("subscribe_event", "subscribed", eventId=event.id)
        await on_a.first("subscribed", eventId=event.id)

        async with (
            httpx.AsyncClient(base_url=a.url, timeout=60) as via_a,
            httpx.AsyncClient(base_url=b.url, timeout=60) as via_b,
        ):
            for round_ in range(5):
                # Some one at a time, some at once (decided in one batch or several).
                await book(via_a if round_ % 2 else via_b, tokens[round_ % 4], event.id)
                await asyncio.gather(
                    book(via_a, tokens[2], event.id), book(via_b, tokens[3], event.id, 2)
                )

        final = seats_in_db(engine, event.id)
        assert final["availableSeats"] == 200 - 5 * 4
        for client in (on_a, on_b):

            def has_last(_: object, c: LiveClient = client) -> bool:
                return final["version"] in c.seat_versions(event.id)

            await client.wait_for(has_last, "last change")
            assert_every_change_in_order(client, event.id, final["version"])
            last = client.of_type(*SEAT_TYPES)[-1]
            assert last["availableSeats"] == final["availableSeats"]
            assert last["seatCapacity"] == 200
            await client.close()

    try:
        asyncio.run(scenario())
    finally:
        for proc in instances:
            proc.stop()


# ---------------------------------------------------------------- convergence


def test_a_client_that_missed_updates_converges_to_the_database(
    engine, api, make_user, make_event, token_for
):
    event = make_event(capacity=50, max_per_user=50)
    token = token_for(make_user())

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=api.url, timeout=60) as http:
            first = await LiveClient.open(f"{api.ws_url}/ws/events/{event.id}", token)
            await first.first("subscribed", eventId=event.id)
            await book(http, token, event.id, 3)
            await first.first("booking_created", eventId=event.id, availableSeats=47)
            await first.close()

            for quantity in (1, 2, 4):  # missed while away
                await book(http, token, event.id, quantity)

            again = await LiveClient.open(f"{api.ws_url}/ws", token)
            snapshot = await again.request("subscribe_event", "subscribed", eventId=event.id)
            db = seats_in_db(engine, event.id)
            assert {k: snapshot[k] for k in db} == db
            assert snapshot["availableSeats"] == 40

            await book(http, token, event.id, 5)
            update = await again.first("booking_created", version=snapshot["version"] + 1)
            assert update["availableSeats"] == seats_in_db(engine, event.id)["availableSeats"] == 35
            await again.close()

    asyncio.run(scenario())


def test_after_the_redis_subscription_breaks_clients_get_a_resync(
    engine, api, redis_client, make_user, make_event, token_for
):
    event = make_event(capacity=30)
    token = token_for(make_user())

    def kill_hub_subscriptions() -> int:
        # Only this test run's API hubs: our Redis db, the events pattern, the control and
        # decisions channels.
        db = redis_client.connection_pool.connection_kwargs.get("db", 0)
        killed = 0
        for info in redis_client.client_list(_type="pubsub"):
            if int(info["db"]) == db and info["psub"] == "1" and info["sub"] == "2":
                killed += redis_client.client_kill_filter(_id=info["id"])
        return killed

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=api.url, timeout=60) as http:
            client = await LiveClient.open(f"{api.ws_url}/ws/events/{event.id}", token)
            await client.first("subscribed", eventId=event.id)
            await book(http, token, event.id, 2)
            assert kill_hub_subscriptions() >= 1
            resync = await client.first("resync")
            [snapshot] = resync["events"]
            db = seats_in_db(engine, event.id)
            assert {k: snapshot[k] for k in db} == db
            # The subscription is back: new changes flow again.
            await book(http, token, event.id, 1)
            await client.first("booking_created", version=db["version"] + 1, availableSeats=27)
            await client.close()

    asyncio.run(scenario())


# ---------------------------------------------------------------- booking_status


def test_booking_status_reaches_the_owner_and_no_one_else(api, make_user, make_event, token_for):
    event = make_event(capacity=10)
    owner, other = make_user(), make_user()

    async def scenario() -> None:
        url = f"{api.ws_url}/ws/events/{event.id}"
        owner_tabs = [await LiveClient.open(url, token_for(owner)) for _ in range(2)]
        stranger = await LiveClient.open(url, token_for(other))
        for client in (*owner_tabs, stranger):
            await client.first("subscribed", eventId=event.id)

        async with httpx.AsyncClient(base_url=api.url, timeout=60) as http:
            mine = await book(http, token_for(owner), event.id, 2)
            for tab in owner_tabs:
                status = await tab.first("booking_status", bookingId=mine["bookingId"])
                assert status["status"] == "confirmed"
                assert status["eventId"] == event.id
                assert status["availableSeats"] == 8
            # The stranger sees the seat count move, but not whose booking it was.
            await stranger.first("booking_created", availableSeats=8)

            theirs = await book(http, token_for(other), event.id, 1)
            await stranger.first("booking_status", bookingId=theirs["bookingId"])
            await owner_tabs[0].first("booking_created", availableSeats=7)
            await owner_tabs[1].first("booking_created", availableSeats=7)

        assert [s["bookingId"] for s in stranger.of_type("booking_status")] == [theirs["bookingId"]]
        for tab in owner_tabs:
            assert [s["bookingId"] for s in tab.of_type("booking_status")] == [mine["bookingId"]]
            await tab.close()
        await stranger.close()

    asyncio.run(scenario())


# ---------------------------------------------------------------- places in line

AHEAD = 16  # waitlisted requests ahead of the owner's, each leaving in a batch of its own


def enable_waitlist(engine: Engine, event_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE events SET waitlist_enabled = true WHERE id = :id"), {"id": event_id}
        )


async def join_waitlist(http: httpx.AsyncClient, token: str, event_id: int) -> dict[str, Any]:
    response = await http.post(
        "/api/bookings",
        json={"eventId": event_id, "quantity": 1},
        headers={"Authorization": f"Bearer {token}", "Prefer": "wait=30"},
    )
    assert response.status_code == 202, response.text
    booking = response.json()["data"]
    assert booking["status"] == "waitlisted", booking
    return booking


async def leave(http: httpx.AsyncClient, token: str, booking_id: str) -> None:
    response = await http.delete(
        f"/api/bookings/{booking_id}",
        headers={"Authorization": f"Bearer {token}", "Prefer": "wait=30"},
    )
    assert response.status_code == 200, response.text


def test_the_owner_hears_its_place_in_line_coalesced_until_the_decision(
    engine, api, make_user, make_event, token_for
):
    event = make_event(capacity=2, max_per_user=2)
    enable_waitlist(engine, event.id)
    holder, owner = make_user(), make_user()
    ahead = [make_user() for _ in range(AHEAD)]

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=api.url, timeout=60) as http:
            held = await book(http, token_for(holder), event.id, 2)  # every seat
            # Signed in, following no event: places reach the owner whatever it follows.
            tab = await LiveClient.open(f"{api.ws_url}/ws", token_for(owner))
            await tab.first("connection_established")
            queued = [await join_waitlist(http, token_for(u), event.id) for u in ahead]
            last = queued[-1]["bookingId"]
            # Another waiting user, signed in after joining: the sign-in read gives its place.
            stranger = await LiveClient.open(f"{api.ws_url}/ws", token_for(ahead[-1]))
            await stranger.first("queue_position", bookingId=last, queuePosition=AHEAD)

            mine = (await join_waitlist(http, token_for(owner), event.id))["bookingId"]
            status = await tab.first("booking_status", bookingId=mine, status="waitlisted")
            assert status["queuePosition"] == AHEAD + 1
            # One by one, so the owner's place changes with every batch, many times a second.
            for user, booking in zip(ahead[:-1], queued[:-1], strict=True):
                await leave(http, token_for(user), booking["bookingId"])
            await tab.first("queue_position", bookingId=mine, queuePosition=2)  # the latest wins
            late_tab = await LiveClient.open(f"{api.ws_url}/ws", token_for(owner))
            first = await late_tab.first("queue_position", bookingId=mine)
            assert first["queuePosition"] == 2 and first["status"] == "waitlisted"

            await leave(http, token_for(ahead[-1]), last)
            await tab.first("queue_position", bookingId=mine, queuePosition=1)
            await leave(http, token_for(holder), held["bookingId"])  # seats back: promoted
            for client in (tab, late_tab):
                decided = await client.first("booking_status", bookingId=mine, status="confirmed")
                assert decided["promoted"] is True and decided["queuePosition"] is None
            # Longer than the coalescing interval: an update still queued would be here by now.
            await asyncio.sleep(2)
            await tab.request("ping", "pong")

        places = [
            (i, m["data"])
            for i, m in enumerate(tab.messages)
            if m["type"] == "queue_position" and m["data"]["bookingId"] == mine
        ]
        # Coalesced: fewer messages than places passed through, at most one a second.
        assert 2 <= len(places) < AHEAD - 1, places
        stamps = [datetime.fromisoformat(p["timestamp"]) for _, p in places]
        gaps = [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:], strict=False)]
        assert min(gaps) >= 0.9, gaps
        positions = [p["queuePosition"] for _, p in places]
        assert positions == sorted(positions, reverse=True) and positions[-1] == 1, positions
        assert places[-1][1]["status"] == "waitlisted"
        # The decision ends them: nothing about the booking after its final status.
        final = next(
            i
            for i, m in enumerate(tab.messages)
            if m["type"] == "booking_status" and m["data"]["status"] == "confirmed"
        )
        assert places[-1][0] < final
        # No one else hears the owner's places; the stranger hears only its own.
        assert {p["bookingId"] for p in stranger.of_type("queue_position")} == {last}
        for client in (tab, late_tab, stranger):
            await client.close()

    asyncio.run(scenario())


# ---------------------------------------------------------------- authentication


def expired_token(settings: Any, user_id: int) -> str:
    past = datetime.now(UTC) - timedelta(hours=2)
    claims = {"sub": str(user_id), "iat": past, "nbf": past, "exp": past + timedelta(hours=1)}
    return jwt.encode(claims, settings.JWT_SECRET.get_secret_value(), algorithm="HS256")


def test_bad_credentials_close_with_1008(api, settings, engine, make_user, token_for):
    user, gone = make_user(), make_user()
    gone_token = token_for(gone)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM users WHERE id = :id"), {"id": gone.id})

    async def closed_with(url: str, first: dict[str, Any] | str | None = None) -> int | None:
        client = await LiveClient.open(url)
        if isinstance(first, str):
            await client.conn.send(first)
        elif first is not None:
            await client.send(**first)
        code = await client.wait_closed()
        assert not client.of_type("connection_established")
        return code

    async def scenario() -> None:
        ws = f"{api.ws_url}/ws"
        assert await closed_with(f"{ws}?token=not-a-jwt") == 1008
        assert await closed_with(f"{ws}?token={expired_token(settings, user.id)}") == 1008
        assert await closed_with(f"{ws}?token={gone_token}") == 1008
        assert await closed_with(f"{ws}/events/1?token={gone_token}") == 1008
        assert await closed_with(ws, {"message_type": "auth", "token": "garbage"}) == 1008
        assert await closed_with(ws, {"message_type": "ping"}) == 1008
        assert await closed_with(ws, "not json") == 1008
        assert await closed_with(ws) == 1008  # nothing within the 5 s allowed

        # The same user with a good token, in the URL or as the first message, gets in.
        via_url = await LiveClient.open(ws, token_for(user))
        via_message = await LiveClient.open(ws)
        await via_message.send("auth", token=token_for(user))
        for client in (via_url, via_message):
            established = await client.first("connection_established")
            assert established["clientId"]
            await client.close()

    asyncio.run(scenario())


def test_a_socket_closes_with_1008_when_its_token_expires(api, settings, make_user):
    user = make_user()
    now = datetime.now(UTC)
    claims = {"sub": str(user.id), "iat": now, "nbf": now, "exp": now + timedelta(seconds=2)}
    short_lived = jwt.encode(claims, settings.JWT_SECRET.get_secret_value(), algorithm="HS256")

    async def scenario() -> None:
        client = await LiveClient.open(f"{api.ws_url}/ws", short_lived)
        await client.first("connection_established")
        assert await client.wait_closed() == 1008
        assert client.conn.close_reason == "token expired"

    asyncio.run(scenario())


def test_origin_is_checked_for_browsers(api, settings, make_user, token_for):
    token = token_for(make_user())

    async def scenario() -> None:
        url = f"{api.ws_url}/ws?token={token}"
        with pytest.raises(InvalidStatus) as refused:
            await LiveClient.open(url, origin="https://evil.example")
        assert refused.value.response.status_code == 403
        # Listed in CORS_ORIGINS, the API's own origin (the /live page), or no browser at all.
        for origin in (settings.CORS_ORIGINS[0], api.url, None):
            client = await LiveClient.open(url, origin=origin)
            await client.first("connection_established")
            await client.close()

    asyncio.run(scenario())


# ---------------------------------------------------------------- protocol


def test_commands_errors_and_limits_keep_the_socket_open(
    api, settings, engine, make_user, make_event, token_for
):
    events = [make_event(name=f"Show {i}") for i in range(settings.WS_MAX_SUBSCRIPTIONS + 1)]
    token = token_for(make_user())

    async def scenario() -> None:
        client = await LiveClient.open(f"{api.ws_url}/ws", token)
        await client.first("connection_established")

        assert (await client.request("ping", "pong"))["timestamp"]
        await client.conn.send("{not json")
        assert (await client.first("error", code="INVALID_JSON"))["message"]
        assert (await client.request("dance", "error"))["code"] == "UNKNOWN_TYPE"
        bad = await client.request("subscribe_event", "error", eventId="seven")
        assert bad["code"] == "INVALID_EVENT_ID"
        missing = await client.request("subscribe_event", "error", eventId=999_999)
        assert missing["code"] == "EVENT_NOT_FOUND"

        for event in events[:-1]:
            snapshot = await client.request("subscribe_event", "subscribed", eventId=event.id)
            assert snapshot == {
                "eventId": event.id,
                **seats_in_db(engine, event.id),
                "timestamp": snapshot["timestamp"],
            }
        over = await client.request("subscribe_event", "error", eventId=events[-1].id)
        assert over["code"] == "SUBSCRIPTION_LIMIT"

        gone = await client.request("unsubscribe_event", "unsubscribed", eventId=events[0].id)
        assert gone["eventId"] == events[0].id
        # The data-wrapped form the seed's clients send works too.
        await client.send("subscribe_event", data={"eventId": events[-1].id})
        await client.first("subscribed", eventId=events[-1].id)

        stats = await client.request("get_stats", "stats")
        assert stats["subscriptions"] == sorted(e.id for e in events[1:])
        assert stats["connections"] >= 1
        assert stats["redisConnected"] is True
        assert not client.done
        await client.close()

    asyncio.run(scenario())


def test_event_changes_by_an_admin_reach_subscribers(api, make_user, make_event, token_for, auth):
    admin = make_user(role="admin")
    event = make_event(capacity=40, created_by=admin.id)

    async def scenario() -> None:
        client = await LiveClient.open(f"{api.ws_url}/ws/events/{event.id}", token_for(admin))
        snapshot = await client.first("subscribed", eventId=event.id)
        async with httpx.AsyncClient(base_url=api.url, timeout=60, headers=auth(admin)) as http:
            changed = await http.put(f"/api/events/{event.id}", json={"seatCapacity": 60})
            assert changed.status_code == 200, changed.text
            updated = await client.first("event_updated", eventId=event.id)
            assert updated["version"] == snapshot["version"] + 1
            assert updated["availableSeats"] == 60
            deleted = await http.delete(f"/api/events/{event.id}")
            assert deleted.status_code == 200, deleted.text
            await client.first("event_deleted", eventId=event.id)
        stats = await client.request("get_stats", "stats")
        assert stats["subscriptions"] == []
        await client.close()

    asyncio.run(scenario())


def test_heartbeats_and_going_away_on_shutdown(engine, worker, make_user, token_for):
    token = token_for(make_user())
    proc = ApiProcess("api-ws-shutdown", WS_HEARTBEAT_INTERVAL="0.2").start()

    async def scenario() -> None:
        client = await LiveClient.open(f"{proc.ws_url}/ws", token)
        await client.wait_for(lambda m: len(client.of_type("heartbeat")) >= 2, "two heartbeats")
        await asyncio.to_thread(proc.stop, signal.SIGTERM)
        assert await client.wait_closed() == 1001

    try:
        asyncio.run(scenario())
    finally:
        proc.stop()


# ---------------------------------------------------------------- slow clients


# The tests below open many sockets of one user, and StuckClient floods commands to fill its
# buffers: past WS_MAX_PER_USER and WS_COMMANDS_PER_SECOND (tested in test_ws_hostile.py).
UNCAPPED = {"WS_MAX_PER_USER": "1000", "WS_COMMANDS_PER_SECOND": "1000000"}


class StuckClient:
    """A client that stops reading: it asks for far more replies than every socket buffer on the
    way can hold, then sits there, connected, never reading."""

    # Replies of ~300 bytes each: ~9 MB, well past the kernel's 4 MB send buffer limit.
    REQUESTS = 30_000

    def __init__(self, url: str, port: int) -> None:
        self.url, self.port = url, port
        self.released = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        from websockets.asyncio.client import connect

        # A tiny receive buffer of its own, so it takes almost nothing in before it stalls, and no
        # compression, which would shrink these repetitive replies to a few bytes each.
        sock = small_buffer_socket(self.port)
        async with connect(self.url, sock=sock, max_queue=1, compression=None) as conn:
            for sent in range(self.REQUESTS):
                await conn.send('{"type":"get_stats"}')
                if sent % 200 == 0:
                    await asyncio.sleep(0)
            await self.released.wait()
            conn.transport.abort()  # a close handshake would wait on the full buffers

    async def release(self) -> None:
        self.released.set()
        await self.task


def test_one_client_that_never_reads_does_not_delay_a_hundred_that_do(
    engine, worker, make_user, make_event, token_for
):
    event = make_event(capacity=1000, max_per_user=1000)
    token = token_for(make_user())
    # A queue and send timeout too big to give up on it here: the stuck client stays connected.
    proc = ApiProcess(
        "api-ws-slow", WS_QUEUE_SIZE="1000000", WS_SEND_TIMEOUT="600", **UNCAPPED
    ).start()

    async def scenario() -> None:
        url = f"{proc.ws_url}/ws/events/{event.id}"
        readers = [await LiveClient.open(url, token) for _ in range(100)]
        for reader in readers:
            await reader.first("subscribed", eventId=event.id)
        monitor = readers[0]

        async def queued() -> int:
            return (await monitor.request("get_stats", "stats"))["queued"]

        stuck = StuckClient(f"{url}?token={token}", proc.port)
        # Replies stay in the server's queue only once every buffer on the way is full.
        while await queued() < 5000:
            await asyncio.sleep(0.05)

        async with httpx.AsyncClient(base_url=proc.url, timeout=60) as http:
            for quantity in range(1, 11):
                await book(http, token, event.id, quantity)
        final = seats_in_db(engine, event.id)
        assert final["availableSeats"] == 1000 - 55
        for reader in readers:

            def has_last(_: object, r: LiveClient = reader) -> bool:
                return final["version"] in r.seat_versions(event.id)

            await reader.wait_for(has_last, "last change")
            assert_every_change_in_order(reader, event.id, final["version"])
        stats = await monitor.request("get_stats", "stats")
        # All that while the stuck client was connected with its queue full of unsent messages.
        assert stats["connections"] == 101
        assert stats["droppedClients"] == 0
        assert stats["queued"] >= 5000
        await stuck.release()
        for reader in readers:
            await reader.close()

    try:
        asyncio.run(scenario())
    finally:
        proc.stop()


def test_a_client_that_falls_a_queue_behind_is_dropped_and_the_rest_carry_on(
    engine, worker, make_user, make_event, token_for
):
    event = make_event(capacity=100)
    token = token_for(make_user())
    proc = ApiProcess("api-ws-overflow", WS_QUEUE_SIZE="50", **UNCAPPED).start()

    async def scenario() -> None:
        url = f"{proc.ws_url}/ws/events/{event.id}"
        readers = [await LiveClient.open(url, token) for _ in range(10)]
        for reader in readers:
            await reader.first("subscribed", eventId=event.id)
        stuck = StuckClient(f"{url}?token={token}", proc.port)

        async def stats() -> dict[str, Any]:
            return await readers[0].request("get_stats", "stats")

        async def dropped() -> bool:
            now = await stats()
            return now["droppedClients"] == 1 and now["connections"] == 10

        async with asyncio.timeout(60):  # a hang guard, not a measurement
            while not await dropped():
                await asyncio.sleep(0.05)
        await stuck.release()

        async with httpx.AsyncClient(base_url=proc.url, timeout=60) as http:
            await book(http, token, event.id, 4)
        for reader in readers:
            await reader.first("booking_created", eventId=event.id, availableSeats=96)
            await reader.close()

    try:
        asyncio.run(scenario())
    finally:
        proc.stop()
