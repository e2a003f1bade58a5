"""Test fixtures against real services: a database of its own built by migrations, a Redis db
number of its own, real Celery worker and uvicorn processes where a test needs them.

The test database and Redis db are forced here, before anything reads the settings, so a test
run can never touch the development data.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

TEST_DATABASE_URL = os.environ.get(
    "TEST_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/ebs_test"
)
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# The Celery broker: the test Redis, unless TEST_CELERY_BROKER_URL names a RabbitMQ
# (amqp://user:password@host:port/); the run then gets a vhost of its own, named after its
# database. `make test` runs the pipeline and fault tests a second time that way.
TEST_AMQP_URL = os.environ.get("TEST_CELERY_BROKER_URL", "")
TEST_DATABASE_NAME = TEST_DATABASE_URL.rsplit("/", 1)[-1]
TEST_BROKER_URL = f"{TEST_AMQP_URL.rstrip('/')}/{TEST_DATABASE_NAME}" if TEST_AMQP_URL else ""
TEST_ENV = {
    "APP_ENV": "test",
    "DATABASE_URL": TEST_DATABASE_URL,
    "REDIS_URL": TEST_REDIS_URL,
    # Empty: REDIS_URL is the broker (and a CELERY_BROKER_URL in .env is not used).
    "CELERY_BROKER_URL": TEST_BROKER_URL,
    "JWT_SECRET": "test-secret-that-is-long-enough-for-hs256-0123456789",
    "BCRYPT_ROUNDS": "4",  # production never lowers it (see Settings)
    "SWEEP_INTERVAL": "1",
    "SWEEP_PENDING_AFTER": "3",
    "LOG_LEVEL": "WARNING",
    "ALLOWED_HOSTS": "testserver,127.0.0.1,localhost",  # TestClient's Host, and real servers'
    "FORWARDED_ALLOW_IPS": "",  # uvicorn's own default trusts loopback; run.sh sets it like this
}
os.environ.update(TEST_ENV)
# Celery reads CELERY_BROKER_URL from the environment ahead of any app's own broker_url, so in
# this process, whose producers also aim at tests' private brokers, it stays empty; the
# ``settings`` fixture carries the run's broker, and child processes get it from TEST_ENV.
os.environ["CELERY_BROKER_URL"] = ""

import pytest  # noqa: E402
import redis  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402
from sqlalchemy import Engine, create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

import devstack  # noqa: E402
from common.events.models import Event  # noqa: E402
from common.security import create_access_token, hash_password  # noqa: E402
from common.settings import Settings, get_settings  # noqa: E402
from common.users.models import User  # noqa: E402
from devstack import ROOT, RabbitVhost, recreate_database, upgrade_database  # noqa: E402

# Property tests (the booking state machine, schemathesis) draw the same examples on every run
# by default, so CI passes or fails on the code, not on the draw. HYPOTHESIS_PROFILE=hunt draws
# new ones each run, to look for more (with SCHEMATHESIS_EXAMPLES=500, say).
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
hypothesis_settings.register_profile("hunt", derandomize=False, print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Child processes' logs and beat's schedule, one directory per test database, so two runs on
# different databases (TEST_DATABASE_URL) never write over each other's files.
RUN_DIR = ROOT / ".run" / f"test-{make_url(TEST_DATABASE_URL).database}"
# In the order the worker's procedure locks them (event row, bookings, logs), so a worker still
# finishing a stale task and the truncate between tests wait for each other instead of deadlocking.
TABLES = "events, bookings, booking_logs, users, payment_callbacks"


# The fixtures that reach a service; every other fixture that does reaches it through one of these
# (the settings open a RabbitMQ vhost when the run has one).
SERVICE_FIXTURES = {"engine", "redis_client", "private_broker", "worker", "api_server"} | (
    {"settings"} if TEST_AMQP_URL else set()
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked ``fast`` (``make test-fast``, first in CI) runs without PostgreSQL, Redis,
    Celery or uvicorn: asking for a fixture that needs one is a mistake in the test, not a
    service that happens to be down."""
    for item in items:
        if item.get_closest_marker("fast") is None:
            continue
        needs = SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if needs:
            raise pytest.UsageError(f"{item.nodeid} is marked fast but uses {sorted(needs)}")


@pytest.fixture(scope="session")
def settings() -> Iterator[Settings]:
    get_settings.cache_clear()
    settings = get_settings().model_copy(update={"CELERY_BROKER_URL": TEST_BROKER_URL})
    if not TEST_AMQP_URL:
        yield settings
        return
    vhost = RabbitVhost(TEST_AMQP_URL, TEST_DATABASE_NAME).start()
    yield settings
    vhost.close()


@pytest.fixture
def private_broker(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The environment for a stack of the test's own that no other test's worker consumes
    from: with RabbitMQ, a vhost of its own; with Redis nothing, the caller's private
    redis-server (its REDIS_URL) being the broker."""
    if not TEST_AMQP_URL:
        yield {}
        return
    tag = request.node.name.removeprefix("test_")[:40].strip("[]")
    vhost = RabbitVhost(TEST_AMQP_URL, f"{TEST_DATABASE_NAME}-{tag}").start()
    yield {"CELERY_BROKER_URL": vhost.url}
    vhost.close()


@pytest.fixture(scope="session")
def engine(settings: Settings) -> Iterator[Engine]:
    recreate_database(settings.sqlalchemy_url)
    upgrade_database(settings.sqlalchemy_url)
    engine = create_engine(settings.sqlalchemy_url, pool_size=10, max_overflow=20)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@pytest.fixture(scope="session")
def sync_baseline(engine: Engine) -> None:
    """The bench's synchronous baseline procedure (``bench.create_booking``), which the
    product's migrations do not carry, installed as the bench installs it."""
    from bench import baseline

    with engine.begin() as conn:
        baseline.install(conn)


@pytest.fixture(scope="session")
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    yield client
    client.close()


def clear_redis(client: redis.Redis) -> None:
    # Only our keys: Celery's kombu bindings live in the same db and must survive.
    keys = list(client.scan_iter("ebs:*"))
    if keys:
        client.delete(*keys)


@pytest.fixture(autouse=True)
def clean(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts with empty tables and no pipeline keys (several processes share them,
    so a rolled-back transaction would not do)."""
    if "engine" not in request.fixturenames:
        yield
        return
    engine: Engine = request.getfixturevalue("engine")
    with engine.begin() as conn:
        conn.execute(text(f"LOCK TABLE {TABLES} IN ACCESS EXCLUSIVE MODE"))
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    clear_redis(request.getfixturevalue("redis_client"))
    yield


@pytest.fixture
def db(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    with session_factory() as session:
        yield session


# ---------------------------------------------------------------- factories


@pytest.fixture
def make_user(session_factory: sessionmaker[Session], settings: Settings) -> Callable[..., User]:
    counter = iter(range(1, 1_000_000))
    password_hash = hash_password("password123", 4)

    def make(role: str = "user", email: str | None = None, name: str = "Test User") -> User:
        with session_factory() as session:
            user = User(
                email=email or f"{role}{next(counter)}@example.com",
                name=name,
                role=role,
                password_hash=password_hash,
            )
            session.add(user)
            session.commit()
            return user

    return make


@pytest.fixture
def token_for(settings: Settings) -> Callable[[User], str]:
    return lambda user: create_access_token(user.id, user.role, settings)


@pytest.fixture
def auth(token_for: Callable[[User], str]) -> Callable[[User], dict[str, str]]:
    return lambda user: {"Authorization": f"Bearer {token_for(user)}"}


@pytest.fixture
def make_event(session_factory: sessionmaker[Session]) -> Callable[..., Event]:
    def make(
        *,
        capacity: int = 100,
        available: int | None = None,
        max_per_user: int = 10,
        created_by: int | None = None,
        starts_in: timedelta = timedelta(days=7),
        name: str = "Concert",
    ) -> Event:
        with session_factory() as session:
            event = Event(
                name=name,
                description="A test event",
                venue="Test Hall",
                event_date=datetime.now(UTC) + starts_in,
                seat_capacity=capacity,
                available_seats=capacity if available is None else available,
                max_seats_per_user=max_per_user,
                created_by=created_by,
            )
            session.add(event)
            session.commit()
            return event

    return make


@pytest.fixture
def hold_event(
    session_factory: sessionmaker[Session], make_event: Callable[..., Event]
) -> Callable[..., Event]:
    """An event whose accepted requests are held ``seconds`` (and its waitlist on if asked)."""

    def make(seconds: int = 600, waitlist: bool = False, **options: object) -> Event:
        event = make_event(**options)
        with session_factory() as session:
            session.execute(
                text("UPDATE events SET hold_seconds = :s, waitlist_enabled = :w WHERE id = :id"),
                {"s": seconds, "w": waitlist, "id": event.id},
            )
            session.commit()
        return event

    return make


# ---------------------------------------------------------------- the app in-process


@pytest.fixture
def client(engine: Engine, settings: Settings) -> Iterator[TestClient]:
    from api.app import create_app

    with TestClient(create_app(settings)) as test_client:
        yield test_client


# ---------------------------------------------------------------- real processes
# The scaffolding is devstack's (shared with the benchmark); these bind it to the test settings
# and RUN_DIR.


def process_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(TEST_ENV)
    env.update(extra)
    return env


class ManagedProcess(devstack.ManagedProcess):
    """A real child process (its own process group) logging to ``RUN_DIR/<name>.log``."""

    def __init__(self, name: str) -> None:
        super().__init__(name, RUN_DIR)


class WorkerProcess(devstack.WorkerProcess):
    """A real ``celery worker`` on the test database and Redis db."""

    def __init__(
        self, name: str, concurrency: int = 2, queues: str = "bookings,maintenance", **env: str
    ) -> None:
        super().__init__(name, RUN_DIR, process_env(**env), concurrency=concurrency, queues=queues)


class BeatProcess(devstack.BeatProcess):
    """A real ``celery beat`` (the sweeper's schedule)."""

    def __init__(self, name: str, **env: str) -> None:
        super().__init__(name, RUN_DIR, process_env(**env))


class ApiProcess(devstack.ApiProcess):
    """A real ``uvicorn`` serving the app on a free port."""

    def __init__(self, name: str = "api", **env: str) -> None:
        super().__init__(name, RUN_DIR, process_env(**env))


@pytest.fixture(scope="session")
def worker(engine: Engine, settings: Settings) -> Iterator[WorkerProcess]:
    """One real Celery worker for the session's pipeline tests."""
    proc = WorkerProcess("worker").start()
    yield proc
    proc.stop()


@pytest.fixture
def api_server(engine: Engine, worker: WorkerProcess) -> Iterator[ApiProcess]:
    proc = ApiProcess().start()
    yield proc
    proc.stop()
