"""Outages answer, they do not hang: a PostgreSQL or a Redis that accepts connections and never
replies (a private server, SIGSTOPped), and a PostgreSQL stopped and restarted during a sale.

Every server here is private (``devstack.PostgresServer``, ``devstack.RedisServer``), so
freezing or stopping it touches nobody else's run, and the stack's short bounds are set in its
environment. The clients' own timeouts only detect a hang, far above the documented bounds;
nothing asserts on elapsed time.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis
from pydantic import ValidationError
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from common.channels import signal_key
from common.events.models import Event
from common.security import create_access_token, hash_password
from common.settings import Settings
from common.users.models import User
from devstack import PostgresServer, RedisServer, wait_until
from tests.conftest import ApiProcess, BeatProcess, WorkerProcess
from tests.test_faults import CAPACITY, Sale, SeatWatcher, assert_sale_settled

pytestmark = pytest.mark.slow

HANG = 60  # seconds: a client that waits this long has met a hang, not a bound
SETTLE = 120
REPLY_GIVEN_UP = "PostgreSQL did not answer"  # common/db.py's OperationalError

# Short bounds, so the outages are felt within seconds (the defaults are in docs/configuration.md).
BOUNDS = {
    "DB_CONNECT_TIMEOUT": "1",
    "DB_POOL_TIMEOUT": "1",
    "DB_STATEMENT_TIMEOUT": "2",
    "DB_REPLY_TIMEOUT": "3",
    "SIGNAL_TIMEOUT": "0.5",
    "HEALTH_TIMEOUT": "1",
    "SWEEP_INTERVAL": "1",
    "SWEEP_PENDING_AFTER": "2",
    "BOOKING_DEADLINE": "3",
}
# An answer later than this missed BOOKING_DEADLINE: loose, for a busy machine, yet far below
# what a request waited before there was a deadline (each of its retries its own bounds).
LATE = 2 * float(BOUNDS["BOOKING_DEADLINE"]) + 5


@dataclass
class Stack:
    database: Engine
    redis: RedisServer
    api: ApiProcess
    procs: list[Any] = field(default_factory=list)

    def book(self, token: str, key: str, **headers: str) -> httpx.Response:
        return httpx.post(
            f"{self.api.url}/api/bookings",
            json={"eventId": self.event_id, "quantity": 1},
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key, **headers},
            timeout=HANG,
        )

    def health(self) -> httpx.Response:
        return httpx.get(f"{self.api.url}/health", timeout=HANG)

    event_id: int = 0


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def private_database(postgres: PostgresServer) -> Iterator[tuple[str, Engine]]:
    """A fresh database on the private server, built by the migrations."""
    url = postgres.create_database("ebs_outage")
    engine = create_engine(url, pool_pre_ping=True)
    try:
        yield url, engine
    finally:
        postgres.thaw()
        engine.dispose()


@pytest.fixture
def make_stack(request: pytest.FixtureRequest) -> Iterator[Callable[..., Stack]]:
    started: list[Any] = []
    servers: list[RedisServer] = []
    tag = request.node.name.removeprefix("test_")[:24]

    def make(database_url: str, engine: Engine, **settings: str) -> Stack:
        redis_server = RedisServer().start()
        servers.append(redis_server)
        env = {"DATABASE_URL": database_url, "REDIS_URL": redis_server.url, **BOUNDS, **settings}
        procs: list[Any] = [
            ApiProcess(f"outage-{tag}-api", **env),
            WorkerProcess(f"outage-{tag}-worker", **env),  # type: ignore[arg-type]
            BeatProcess(f"outage-{tag}-beat", **env),
        ]
        started.extend(procs)
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda proc: proc.start(), procs))
        return Stack(engine, redis_server, procs[0], procs)

    yield make
    for proc in started:
        proc.stop(9)
    for server in servers:
        server.thaw()
        server.close()


def seed(engine: Engine, settings: Settings, users: int) -> tuple[int, list[str]]:
    """An event of CAPACITY seats and ``users`` users with their tokens, in ``engine``'s DB."""
    password_hash = hash_password("password123", 4)
    with Session(engine) as session:
        event = Event(
            name="Outage sale",
            description="",
            venue="Hall",
            event_date=datetime.now(UTC) + timedelta(days=7),
            seat_capacity=CAPACITY,
            available_seats=CAPACITY,
            max_seats_per_user=10,
        )
        people = [
            User(
                email=f"outage{i}@example.com",
                name="Buyer",
                role="user",
                password_hash=password_hash,
            )
            for i in range(users)
        ]
        session.add_all([event, *people])
        session.commit()
        tokens = [create_access_token(u.id, u.role, settings) for u in people]
        return event.id, tokens


def bookings(engine: Engine, event_id: int) -> dict[str, str]:
    """idempotency key -> status, for the event."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT idempotency_key, status FROM bookings WHERE event_id = :e"),
            {"e": event_id},
        ).all()
    return {key: status for key, status in rows}  # noqa: C416 (rows are not pairs to mypy)


def booking_ids(engine: Engine, event_id: int) -> dict[str, str]:
    """idempotency key -> booking id, for the event."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT idempotency_key, booking_id FROM bookings WHERE event_id = :e"),
            {"e": event_id},
        ).all()
    return {key: booking_id for key, booking_id in rows}  # noqa: C416


def decided(engine: Engine, event_id: int) -> bool:
    statuses = set(bookings(engine, event_id).values())
    return bool(statuses) and "pending" not in statuses


def assert_unavailable(response: httpx.Response, *down: str) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    if down:
        assert [d["field"] for d in response.json()["error"]["details"]] == list(down)
    else:
        assert int(response.headers["Retry-After"]) > 0


# ---------------------------------------------------------------- PostgreSQL frozen


def test_a_frozen_postgres_answers_503_and_recovers(
    postgres: PostgresServer, private_database, make_stack, settings: Settings
) -> None:
    url, engine = private_database
    stack = make_stack(url, engine)
    worker = stack.procs[1]
    stack.event_id, tokens = seed(engine, settings, users=8)
    assert stack.book(tokens[0], "before").status_code == 202  # API and worker: open connections
    wait_until(lambda: decided(engine, stack.event_id), SETTLE, "the first booking decided")

    postgres.freeze()
    try:
        # Every request finds the open connections silent and new ones unanswered: each is 503,
        # also when more of them wait at once than the pool holds.
        with ThreadPoolExecutor(8) as pool:
            frozen = list(pool.map(lambda n: stack.book(tokens[n], f"frozen-{n}"), range(8)))
        for response in frozen:
            assert_unavailable(response)
        assert_unavailable(stack.health(), "postgres")
        # The worker's tasks (the sweeper's, each second) give up too, rather than hang until
        # Celery's hard time limit kills the child.
        wait_until(lambda: REPLY_GIVEN_UP in worker.log.read_text(), HANG, "the worker to give up")
    finally:
        postgres.thaw()

    wait_until(lambda: stack.health().status_code == 200, HANG, "health after thaw")
    # Nothing half-written: the refused requests stored nothing; their retries are stored once
    # and decided by the same worker, which needed no restart.
    assert list(bookings(engine, stack.event_id)) == ["before"]
    for n in range(8):
        assert stack.book(tokens[n], f"frozen-{n}").status_code == 202
    wait_until(lambda: decided(engine, stack.event_id), SETTLE, "the retried bookings decided")
    assert sorted(bookings(engine, stack.event_id)) == sorted(
        ["before", *(f"frozen-{n}" for n in range(8))]
    )
    assert set(bookings(engine, stack.event_id).values()) == {"confirmed"}
    assert worker.running


def test_every_booking_is_answered_within_the_deadline_while_postgres_is_frozen(
    postgres: PostgresServer, private_database, make_stack, settings: Settings
) -> None:
    """More requests than the intake writers take at once, on a frozen database: each one is
    answered by BOOKING_DEADLINE, those queued behind the writers and those in their batches
    alike (they were answered 40-100 s later with the default bounds: a batch's failure was
    retried request by request, each waiting its own bounds, and the queue had no deadline)."""
    url, engine = private_database
    stack = make_stack(url, engine)
    stack.event_id, tokens = seed(engine, settings, users=30)
    assert stack.book(tokens[0], "before").status_code == 202

    def timed(n: int) -> tuple[httpx.Response, float]:
        sent = time.monotonic()
        response = stack.book(tokens[n], f"frozen-{n}")
        return response, time.monotonic() - sent

    postgres.freeze()
    try:
        with ThreadPoolExecutor(30) as pool:
            frozen = list(pool.map(timed, range(30)))
    finally:
        postgres.thaw()

    late = [round(took, 1) for _, took in frozen if took > LATE]
    assert not late, f"answered past BOOKING_DEADLINE ({BOUNDS['BOOKING_DEADLINE']} s): {late}"
    for response, _ in frozen:
        assert_unavailable(response)
    # A request whose batch may have reached the database is told its booking's id.
    stored = booking_ids(engine, stack.event_id)
    for n, (response, _) in enumerate(frozen):
        if f"frozen-{n}" in stored:
            named = [d.get("bookingId") for d in response.json()["error"]["details"]]
            assert stored[f"frozen-{n}"] in named, response.text
    wait_until(lambda: stack.health().status_code == 200, HANG, "health after thaw")
    for n in range(30):
        assert stack.book(tokens[n], f"frozen-{n}").status_code == 202


def test_the_reply_bound_must_outlast_the_statement_timeout() -> None:
    # Else the client would drop a statement the server is still allowed to run, its outcome
    # unknown to the request.
    with pytest.raises(ValidationError, match="DB_REPLY_TIMEOUT"):
        Settings(DB_STATEMENT_TIMEOUT=30, DB_REPLY_TIMEOUT=30)
    assert Settings(DB_STATEMENT_TIMEOUT=0, DB_REPLY_TIMEOUT=5).DB_REPLY_TIMEOUT == 5


# ---------------------------------------------------------------- Redis frozen


def test_a_frozen_redis_still_accepts_bookings_and_the_sweeper_decides_them(
    engine: Engine, make_stack, make_user, make_event, token_for, settings: Settings
) -> None:
    stack = make_stack(settings.DATABASE_URL, engine)
    stack.event_id = make_event(capacity=10).id
    token = token_for(make_user())
    assert stack.book(token, "warm").status_code in (201, 202)

    stack.redis.freeze()
    try:
        # The booking is committed, so it is 202 whatever becomes of its signal.
        accepted = stack.book(token, "frozen")
        assert accepted.status_code == 202, accepted.text
        assert bookings(engine, stack.event_id)["frozen"] == "pending"
        # Prefer: wait hears nothing from a silent Redis and answers at the end of its wait.
        waited = stack.book(token, "frozen-wait", Prefer="wait=1")
        assert waited.status_code == 202, waited.text
        assert waited.headers["Preference-Applied"] == "wait=1"
        assert_unavailable(stack.health(), "redis")
    finally:
        stack.redis.thaw()

    # The signals were lost; the sweeper finds the pending rows and has them decided.
    wait_until(
        lambda: set(bookings(engine, stack.event_id).values()) == {"confirmed"},
        SETTLE,
        "the frozen requests decided",
    )
    assert stack.health().status_code == 200


def test_a_signal_key_left_without_its_task_does_not_hold_the_events_decisions(
    engine: Engine, make_stack, make_user, make_event, token_for, settings: Settings
) -> None:
    """Redis frozen while intake signals: its SET NX times out, so no task is sent, but Redis
    applies the SET when it resumes. The key then stands for a task that does not exist; the
    sweeper must not take it for one (it did, and the event waited out SIGNAL_TTL, here far
    longer than this test waits)."""
    stack = make_stack(settings.DATABASE_URL, engine, SIGNAL_TTL="3600")
    stack.event_id = make_event(capacity=10).id
    token = token_for(make_user())
    signals = redis.Redis.from_url(stack.redis.url)
    assert stack.book(token, "warm").status_code == 202
    wait_until(lambda: decided(engine, stack.event_id), SETTLE, "the first booking decided")
    wait_until(lambda: not signals.exists(signal_key(stack.event_id)), SETTLE, "its key taken")

    stack.redis.freeze()
    try:
        assert stack.book(token, "frozen").status_code == 202
    finally:
        stack.redis.thaw()

    wait_until(lambda: decided(engine, stack.event_id), SETTLE, "the frozen request decided")
    assert bookings(engine, stack.event_id)["frozen"] == "confirmed"


def test_a_committed_booking_is_202_when_postgres_stops_during_its_wait(
    postgres: PostgresServer, private_database, make_stack, settings: Settings
) -> None:
    """Prefer: wait, the booking stored, then the database stops before the decision: the
    answer is the booking the request already holds (202, its id), not a 503 that would send a
    client without an Idempotency-Key to book again."""
    url, engine = private_database
    stack = make_stack(url, engine)
    stack.procs[1].stop(9)  # no worker: the booking stays pending for the whole wait
    stack.event_id, tokens = seed(engine, settings, users=1)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(stack.book, tokens[0], "waits", Prefer="wait=10")
        wait_until(lambda: "waits" in bookings(engine, stack.event_id), HANG, "the row stored")
        stored = booking_ids(engine, stack.event_id)["waits"]
        engine.dispose()
        postgres.stop(signal.SIGINT)
        try:
            answer = waiting.result()
        finally:
            postgres.start()
    assert answer.status_code == 202, answer.text
    assert answer.json()["data"]["bookingId"] == stored
    assert answer.json()["data"]["status"] == "pending"
    assert answer.headers["Location"] == f"/api/bookings/{stored}"


# ---------------------------------------------------------------- PostgreSQL restarted in a sale


def test_postgres_stopped_and_restarted_during_a_sale(
    postgres: PostgresServer, private_database, make_stack, settings: Settings
) -> None:
    url, engine = private_database
    stack = make_stack(url, engine)
    stack.event_id, tokens = seed(engine, settings, users=40)
    sale = Sale(lambda: stack.api.url, stack.event_id, tokens, per_user=5, pace=0.05)
    sale.watcher = SeatWatcher(lambda: stack.api.ws_url, stack.event_id, tokens[0]).start()
    try:
        wait_until(lambda: sale.watcher and sale.watcher.connections, HANG, "the live page")
        sale.start()
        wait_until(lambda: len(bookings(engine, stack.event_id)) >= 40, SETTLE, "sale under way")
        postgres.stop(signal.SIGINT)  # a fast shutdown, as an operator's restart
        wait_until(lambda: sale.server_errors, SETTLE, "requests refused while it is down")
        postgres.start()
        assert_sale_settled(engine, sale)
    finally:
        sale.watcher.stop()
    # Refused while the database was down: 503s, never 500s (assert_sale_settled), and some.
    assert {status for status, _ in sale.server_errors} == {503}
    worker = stack.procs[1]
    assert worker.running and "OperationalError" in worker.log.read_text()
