"""Network faults between hosts during a flash sale (issue 13), and the multi-host sale (14.4).

Every test builds hosts in network namespaces (``tests/netns.py``): a database host running a
private PostgreSQL, a Redis host (or one host for both), API hosts (uvicorn) and worker hosts
(celery worker), each pair of hosts on a wire of its own; ``celery beat`` runs on the Redis
host. The test process is the clients' machine: it reaches the API hosts over a wire from the
root namespace, and reads the database through the private server's Unix socket.

A sale is several events on sale at once, a few hundred booking requests from concurrent HTTP
clients that retry a lost answer with the same ``Idempotency-Key`` (on another API host when
theirs is gone), some cancellations, and a live page (WebSocket) per event. A fault is
injected mid-sale, healed where the scenario heals, and afterwards ``assert_settled`` checks:
every accepted booking stored once and decided once (one decision row in booking_logs), none
left pending, the seat invariant, confirmed seats within capacity, and each live page showing
the database's seats and version.

The bounds given to ``wait_until`` only keep a broken run from hanging; nothing here asserts on
elapsed time.
"""

from __future__ import annotations

import itertools
import random
import shutil
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

import devstack
from common.events.models import Event
from common.security import create_access_token, hash_password
from common.settings import Settings
from common.users.models import User
from devstack import (
    PostgresServer,
    RedisServer,
    recreate_database,
    upgrade_database,
    wait_until,
)
from tests import netns
from tests.conftest import RUN_DIR, process_env
from tests.netns import DelayLine, Host, Network
from tests.test_faults import (
    APP_NAME,
    BatchHold,
    Outcome,
    SeatWatcher,
    assert_every_client_answered,
)

pytestmark = pytest.mark.slow

SETTLE = 180  # seconds; a hang guard only
DATABASE = "ebs"
PG_PORT = 5432
EVENTS = 4
CAPACITY = 40  # per event: 160 seats for 300 requests
CLIENTS = 25
PER_CLIENT = 12
CANCEL_EVERY = 9  # every ninth accepted booking is cancelled by its client


@pytest.fixture(scope="module")
def network_ok() -> None:
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def pg_template(network_ok: None) -> Iterator[Path]:
    """A data directory with the schema migrated, built once; each test's server copies it."""
    server = PostgresServer("net-template-pg", RUN_DIR, listen="", trust="10.231.0.0/16")
    try:
        server.initdb().start()
        url = server.socket_url(DATABASE)
        recreate_database(url)
        upgrade_database(url)
        server.stop(signal.SIGINT)  # fast shutdown: a clean checkpoint to copy
        yield server.data
    finally:
        server.close()


# ---------------------------------------------------------------- the hosts


@dataclass
class Cluster:
    net: Network
    logs: Path
    db: Host
    redis_host: Host
    pg: PostgresServer
    redis: RedisServer
    engine: Engine
    apis: list[devstack.ApiProcess] = field(default_factory=list)
    workers: list[devstack.WorkerProcess] = field(default_factory=list)
    worker_hosts: list[Host] = field(default_factory=list)
    procs: list[devstack.ManagedProcess] = field(default_factory=list)
    hosts: dict[str, Host] = field(default_factory=dict)

    def pg_url(self, host: Host, via: str | None = None) -> str:
        address = via or f"{self.db.address_for(host)}:{PG_PORT}"
        return f"postgresql+psycopg2://postgres@{address}/{DATABASE}"

    def redis_url(self, host: Host) -> str:
        return f"redis://{self.redis_host.address_for(host)}:{self.redis.port}/0"

    def env(self, host: Host, pg_via: str | None = None) -> dict[str, str]:
        return process_env(
            DATABASE_URL=self.pg_url(host, pg_via),
            REDIS_URL=self.redis_url(host),
            BATCH_SIZE="10",  # many small batches, so a fault lands inside one
            ALLOWED_HOSTS="*",  # clients name the hosts by their namespace addresses
        )

    def api(self, host: Host, pg_via: str | None = None) -> devstack.ApiProcess:
        proc = devstack.ApiProcess(
            f"{host.name}-uvicorn", self.logs, self.env(host, pg_via), host=host.address_for(None)
        )
        proc.wrap = host.wrap
        self.apis.append(proc)
        self.procs.append(proc)
        return proc

    def worker(self, host: Host, pg_via: str | None = None) -> devstack.WorkerProcess:
        env = {**self.env(host, pg_via), "PGAPPNAME": APP_NAME}  # what BatchHold looks for
        proc = devstack.WorkerProcess(f"{host.name}-celery", self.logs, env)
        proc.wrap = host.wrap
        self.workers.append(proc)
        self.worker_hosts.append(host)
        self.procs.append(proc)
        return proc

    def worker_of(self, backend: int) -> int:
        """Which of ``workers`` holds the database connection ``backend``, by its address."""
        with self.engine.connect() as conn:
            address = conn.execute(
                text("SELECT host(client_addr) FROM pg_stat_activity WHERE pid = :p"),
                {"p": backend},
            ).scalar_one()
        return [h.address_for(self.db) for h in self.worker_hosts].index(address)

    def start(self) -> None:
        """Beat on the Redis host, then every API and worker, in parallel."""
        beat = devstack.BeatProcess(
            "beat",
            self.logs,
            process_env(
                DATABASE_URL=self.pg.socket_url(DATABASE),
                REDIS_URL=f"redis://127.0.0.1:{self.redis.port}/0",
            ),
        )
        beat.wrap = self.redis_host.wrap
        self.procs.append(beat)
        waiting = [p for p in self.procs if not p.running]
        with ThreadPoolExecutor(len(waiting)) as pool:  # each waits for its own readiness
            list(pool.map(lambda p: p.start(), waiting))

    def close(self) -> None:
        for proc in self.procs:
            proc.stop(signal.SIGKILL)
        self.engine.dispose()
        self.redis.close()
        self.pg.close()


@pytest.fixture
def network(network_ok: None) -> Iterator[Network]:
    net = Network()
    try:
        yield net
    finally:
        net.close()


@pytest.fixture
def cluster(
    network: Network, pg_template: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Cluster]]:
    """``cluster(shared=False)``: a database host and a Redis host (one host for both when
    ``shared``), started; the test adds its API and worker hosts, then calls ``start()``."""
    built: list[Cluster] = []
    logs = RUN_DIR / f"net-{request.node.name.removeprefix('test_')[:30]}"
    shutil.rmtree(logs, ignore_errors=True)

    def make(*, shared: bool = False, peers: list[str]) -> Cluster:
        db = network.host("db")
        redis_host = db if shared else network.host("redis")
        hosts = [network.host(name) for name in peers]
        for host in [redis_host, *(h for h in hosts if h.name.startswith("api"))]:
            network.link(None, host)  # the clients' (and the test's) side
        for host in hosts:
            network.link(host, db)
            if not shared:
                network.link(host, redis_host)
        db_addresses = [link.address(db) for link in db.links.values()]
        pg = PostgresServer(
            "db-postgres",
            logs,
            listen=",".join(["127.0.0.1", *db_addresses]),
            trust="10.231.0.0/16",
            port=PG_PORT,
        )
        pg.wrap = db.wrap
        redis_addresses = [link.address(redis_host) for link in redis_host.links.values()]
        redis_server = RedisServer(
            redis_host.address_for(None),
            bind=" ".join(["127.0.0.1", *redis_addresses]),
            wrap=redis_host.wrap,
        )
        pg.initdb(template=pg_template).start()
        redis_server.start()
        engine = create_engine(pg.socket_url(DATABASE), pool_size=5)
        made = Cluster(network, logs, db, redis_host, pg, redis_server, engine)
        made.hosts = {h.name: h for h in hosts}
        built.append(made)
        return made

    yield make
    for made in built:
        made.close()


# ---------------------------------------------------------------- the sale


def seed(engine: Engine, settings: Settings, users: int) -> tuple[list[int], list[str]]:
    """Events on sale and users to buy: ids of the events, the users' tokens."""
    password = hash_password("password123", 4)
    with Session(engine, expire_on_commit=False) as session:
        events = [
            Event(
                name=f"Sale {n}",
                description="A flash sale",
                venue="Hall",
                event_date=datetime.now(UTC) + timedelta(days=7),
                seat_capacity=CAPACITY,
                available_seats=CAPACITY,
                max_seats_per_user=PER_CLIENT,
            )
            for n in range(EVENTS)
        ]
        people = [
            User(email=f"buyer{n}@example.com", name="Buyer", role="user", password_hash=password)
            for n in range(users)
        ]
        session.add_all([*events, *people])
        session.commit()
        tokens = [create_access_token(u.id, u.role, settings) for u in people]
        return [e.id for e in events], tokens


@dataclass
class Sale:
    """Concurrent clients, each booking one seat at a time on a random event and cancelling
    every ``CANCEL_EVERY``-th booking it was granted. A client whose API host stops answering
    tries the next host with the same Idempotency-Key."""

    urls: list[str]
    events: list[int]
    tokens: list[str]
    prefer_wait: int = 0
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    event_of: dict[str, int] = field(default_factory=dict)
    cancels: list[tuple[str, int]] = field(default_factory=list)
    server_errors: list[tuple[int, str]] = field(default_factory=list)
    switched_host: int = 0
    answered: int = 0
    stopped: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def requests(self) -> int:
        return len(self.tokens) * PER_CLIENT

    def _call(self, n: int, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response, int]:
        """The answer, and how many attempts it took."""
        deadline = time.monotonic() + SETTLE
        for attempt in itertools.count():
            url = self.urls[(n + attempt) % len(self.urls)]
            try:
                response = httpx.request(method, url + path, timeout=45, **kwargs)
            except httpx.TransportError:
                # The answer was lost, not necessarily the request: again, same key, next host.
                if time.monotonic() > deadline or self.stopped.is_set():
                    raise
                self.switched_host += len(self.urls) > 1
                time.sleep(0.3)
                continue
            if response.status_code >= 500:
                self.server_errors.append((response.status_code, response.text[:300]))
            if response.status_code in (429, 503) and time.monotonic() < deadline:
                time.sleep(float(response.headers.get("Retry-After", "0.5")))
                continue
            return response, attempt + 1
        raise AssertionError("unreachable")

    def _client(self, n: int) -> None:
        token = self.tokens[n]
        rng = random.Random(n)
        headers = {"Authorization": f"Bearer {token}"}
        if self.prefer_wait:
            headers["Prefer"] = f"wait={self.prefer_wait}"
        for i in range(PER_CLIENT):
            if self.stopped.is_set():  # the test is over (it failed): leave quietly
                return
            key = f"net-{n}-{i}-{uuid.uuid4().hex[:8]}"
            event_id = rng.choice(self.events)
            response, attempts = self._call(
                n, "POST", "/api/bookings",
                json={"eventId": event_id, "quantity": 1},
                headers={**headers, "Idempotency-Key": key},
            )  # fmt: skip
            outcome = Outcome(key, response.status_code, response.json(), attempts)
            self.outcomes[key], self.event_of[key] = outcome, event_id
            self.answered += 1
            booking_id = outcome.booking_id if outcome.status in (201, 202) else None
            if booking_id and (n * PER_CLIENT + i) % CANCEL_EVERY == 0:
                cancel, _ = self._call(n, "DELETE", f"/api/bookings/{booking_id}", headers=headers)
                self.cancels.append((booking_id, cancel.status_code))

    def start(self) -> Sale:
        def run() -> None:
            with ThreadPoolExecutor(len(self.tokens)) as pool:
                list(pool.map(self._quiet_client, range(len(self.tokens))))

        self._thread = threading.Thread(target=run, name="flash-sale", daemon=True)
        self._thread.start()
        return self

    def _quiet_client(self, n: int) -> None:
        try:
            self._client(n)
        except httpx.TransportError:
            if not self.stopped.is_set():
                raise

    def join(self) -> None:
        assert self._thread is not None
        self._thread.join(SETTLE)
        assert not self._thread.is_alive(), "clients never got their answers"


@dataclass
class Flash:
    cluster: Cluster
    sale: Sale
    watchers: list[SeatWatcher]


@pytest.fixture
def flash_sale(settings: Settings) -> Iterator[Callable[..., Flash]]:
    """Seed the cluster's database, open one live page per event (spread over the API hosts;
    a page whose host goes away reconnects to the next one), start the clients."""
    watchers: list[SeatWatcher] = []
    sales: list[Sale] = []

    def make(cluster: Cluster, prefer_wait: int = 0) -> Flash:
        events, tokens = seed(cluster.engine, settings, CLIENTS)
        urls = [api.url for api in cluster.apis]
        pages = [api.ws_url for api in cluster.apis]
        for n, event_id in enumerate(events):
            first = n % len(pages)
            hosts = itertools.cycle(pages[first:] + pages[:first])
            watchers.append(SeatWatcher(partial(next, hosts), event_id, tokens[n]).start())
        wait_until(lambda: all(w.connections for w in watchers), 60, "the live pages to connect")
        sale = Sale(urls, events, tokens, prefer_wait=prefer_wait).start()
        sales.append(sale)
        return Flash(cluster, sale, list(watchers))

    yield make
    for sale in sales:
        sale.stopped.set()
    for watcher in watchers:
        watcher.stop()


# ---------------------------------------------------------------- what must hold afterwards


def unsettled(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT count(*) FROM bookings WHERE status = 'pending'"
                " OR (cancel_requested_at IS NOT NULL AND status = 'confirmed')"
            )
        ).scalar_one()


def assert_settled(flash: Flash) -> None:
    sale, engine = flash.sale, flash.cluster.engine
    sale.join()
    wait_until(lambda: unsettled(engine) == 0, SETTLE, "every booking decided")
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT booking_id, idempotency_key, event_id, status, quantity FROM bookings")
        ).all()
        logs = conn.execute(
            text(
                "SELECT booking_id, action FROM booking_logs"
                " WHERE action IN ('confirmed', 'rejected', 'cancelled')"
            )
        ).all()
        violations = conn.execute(text("SELECT * FROM seat_invariant_violations()")).all()
        events = conn.execute(
            text("SELECT id, seat_capacity, available_seats, version FROM events")
        ).all()

    assert_every_client_answered(sale)
    for _, status in sale.cancels:
        assert status in (200, 202, 409), sale.cancels

    # Stored once: each accepted request (its Idempotency-Key) is exactly one row, on its event.
    accepted = {k: o for k, o in sale.outcomes.items() if o.booking_id is not None}
    keys = Counter(r.idempotency_key for r in rows)
    assert set(keys) == set(accepted), "an accepted request was lost, or one appeared"
    assert max(keys.values()) == 1, "a retried request was stored twice"
    by_id = {r.booking_id: r for r in rows}
    for key, outcome in accepted.items():
        assert by_id[outcome.booking_id].idempotency_key == key
        assert by_id[outcome.booking_id].event_id == sale.event_of[key]
        if outcome.status == 201:
            assert by_id[outcome.booking_id].status in ("confirmed", "cancelled")

    # Decided once: one decision row per booking (a request cancelled before its decision is
    # decided "cancelled"; one cancelled after it keeps its "confirmed"), nothing left pending.
    actions: dict[str, Counter[str]] = {r.booking_id: Counter() for r in rows}
    for booking_id, action in logs:
        actions[booking_id][action] += 1
    for r in rows:
        assert r.status in ("confirmed", "rejected", "cancelled"), r
        allowed = [Counter({r.status: 1})]
        if r.status == "cancelled":
            allowed.append(Counter({"confirmed": 1, "cancelled": 1}))
        assert actions[r.booking_id] in allowed, (r, actions[r.booking_id])
    assert violations == []
    confirmed: Counter[int] = Counter()
    for r in rows:
        if r.status == "confirmed":
            confirmed[r.event_id] += r.quantity
    for event in events:
        assert confirmed[event.id] <= event.seat_capacity
    # The demand exceeded the seats and the sale used them: none was lost to the fault.
    assert sale.requests > EVENTS * CAPACITY
    assert sum(confirmed.values()) + sum(e.available_seats for e in events) == EVENTS * CAPACITY

    # Each live page ends on the database's numbers.
    for watcher in flash.watchers:
        watcher.assert_converged(engine)


def wait_answered(sale: Sale, count: int) -> None:
    wait_until(lambda: sale.answered >= count, SETTLE, f"{count} clients answered")


# ---------------------------------------------------------------- the scenarios


def one_api_one_worker(cluster: Callable[..., Cluster]) -> Cluster:
    c = cluster(peers=["api1", "worker1"])
    c.api(c.hosts["api1"])
    c.worker(c.hosts["worker1"])
    c.start()
    return c


def test_worker_cut_from_postgres_mid_batch(cluster, flash_sale):
    c = one_api_one_worker(cluster)
    flash = flash_sale(c)
    wire = c.db.links["worker1"]
    with BatchHold(c.engine, flash.sale.events[0]) as hold:
        hold.stuck_batch()  # the worker's batch transaction waits inside the procedure
        wire.cut()
    # The batch completes on the server; its answer cannot reach the worker, whose transaction
    # stays open holding the event and its rows (a cancellation of one of them waits). The API
    # takes half the sale meanwhile; then the cable is back.
    wait_answered(flash.sale, flash.sale.requests // 2)
    wire.heal()
    assert_settled(flash)


def test_api_cut_from_redis_while_clients_wait(cluster, flash_sale):
    c = one_api_one_worker(cluster)
    flash = flash_sale(c, prefer_wait=10)
    wait_answered(flash.sale, 30)  # every client has a request in flight, waiting
    wire = c.redis_host.links["api1"]
    wire.cut()
    wait_answered(flash.sale, flash.sale.requests // 3)
    wire.heal()
    assert_settled(flash)


def test_worker_host_partitioned_for_30_seconds(cluster, flash_sale):
    c = one_api_one_worker(cluster)
    flash = flash_sale(c)
    wires = list(c.hosts["worker1"].links.values())
    with BatchHold(c.engine, flash.sale.events[0]) as hold:
        hold.stuck_batch()
        for wire in wires:
            wire.cut()
    time.sleep(30)  # the figure; longer than the worker's keepalives wait (25 s)
    for wire in wires:
        wire.heal()
    assert_settled(flash)


def test_latency_on_the_database_link(cluster, flash_sale):
    c = cluster(peers=["api1", "worker1"])
    api, worker = c.hosts["api1"], c.hosts["worker1"]
    lines = [
        DelayLine(
            f"db-delay-{host.name}",
            c.logs,
            c.db,
            listen=c.db.address_for(host),
            target=f"127.0.0.1:{PG_PORT}",
            seconds=0.1,  # each way: 200 ms more per round trip
        ).start()
        for host in (api, worker)
    ]
    c.procs += lines
    c.api(api, pg_via=lines[0].address)
    c.worker(worker, pg_via=lines[1].address)
    c.start()
    flash = flash_sale(c)
    wait_answered(flash.sale, 30)
    for line in lines:
        line.switch(True)
    wait_answered(flash.sale, flash.sale.requests * 2 // 3)
    for line in lines:
        line.switch(False)
    assert_settled(flash)


def test_multi_host_sale_loses_an_api_host_and_a_worker_host(cluster, flash_sale):
    c = cluster(shared=True, peers=["api1", "api2", "worker1", "worker2"])
    for name in ("api1", "api2"):
        c.api(c.hosts[name])
    for name in ("worker1", "worker2"):
        c.worker(c.hosts[name])
    c.start()
    flash = flash_sale(c)
    wait_answered(flash.sale, flash.sale.requests // 3)
    with BatchHold(c.engine, flash.sale.events[0]) as hold:
        backend, _ = hold.stuck_batch()
        # That worker's host drops off the network for good, mid-batch (power lost, say):
        # no FIN, no RST; its processes run on, unreachable. The API host is killed outright.
        for wire in c.worker_hosts[c.worker_of(backend)].links.values():
            wire.cut()
        c.apis[1].stop(signal.SIGKILL)
    assert_settled(flash)
    assert flash.sale.switched_host > 0, "no client had to move to the other API host"
