"""The system under test, set up by the benchmark itself: its own database and Redis db, its own
uvicorn and Celery worker processes, users and events written straight into PostgreSQL.

Nothing here touches the development database or another Redis db than the one it is given.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Redis dbs and databases that belong to someone else on a shared machine.
FORBIDDEN_DATABASES = {"event_booking", "postgres", "template0", "template1"}
BENCH_JWT_SECRET = "bench-secret-not-for-production-0123456789abcdef"
# A well-formed bcrypt hash nobody can log in with: set-up pays no bcrypt per user.
UNUSABLE_HASH = "$2b$04$" + "." * 53


@dataclass
class StackConfig:
    database_url: str
    redis_url: str
    api_workers: int
    worker_concurrency: int
    pool_size: int | None
    batch_size: int | None
    start_worker: bool
    reuse_database: bool
    log_dir: Path
    worker_nice: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "APP_ENV": "test" if os.environ.get("APP_ENV") == "test" else "development",
                "DATABASE_URL": self.database_url,
                "REDIS_URL": self.redis_url,
                "JWT_SECRET": BENCH_JWT_SECRET,
                "ENABLE_SYNC_BASELINE": "true",
                "LOG_LEVEL": "WARNING",
                "ACCESS_LOG": "false",
            }
        )
        if self.pool_size is not None:
            env["DB_POOL_SIZE"] = str(self.pool_size)
        if self.batch_size is not None:
            env["BATCH_SIZE"] = str(self.batch_size)
        env.update(self.extra_env)
        return env


def check_targets(database_url: str, redis_url: str, reuse: bool) -> None:
    """Refuse to recreate or flush anything that is not plainly the benchmark's own."""
    name = make_url(database_url).database or ""
    if name in FORBIDDEN_DATABASES:
        raise SystemExit(f"refusing to benchmark in database {name!r}: pick one of your own")
    if not reuse and "bench" not in name:
        raise SystemExit(f"the benchmark recreates its database; {name!r} must contain 'bench'")
    db = int(redis.Redis.from_url(redis_url).connection_pool.connection_kwargs.get("db", 0))
    if db == 0:
        raise SystemExit("refusing Redis db 0 (the development db): pass --redis-url .../N")


def prepare_database(database_url: str, reuse: bool) -> None:
    from alembic import command
    from alembic.config import Config

    url = make_url(database_url)
    if not reuse:
        admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{url.database}"'))
        admin.dispose()
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["url"] = database_url
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


def connect(database_url: str) -> Any:
    url = make_url(database_url)
    return psycopg2.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password,
        dbname=url.database,
    )


class Data:
    """Rows written straight into the database: no API, no bcrypt."""

    def __init__(self, database_url: str) -> None:
        self.conn = connect(database_url)
        self.conn.autocommit = True

    def close(self) -> None:
        self.conn.close()

    def sql(self, query: str, args: Any = None) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(query, args)
            return cur.fetchall() if cur.description else []

    def create_users(self, count: int) -> list[int]:
        tag = uuid.uuid4().hex[:8]
        rows = self.sql(
            "INSERT INTO users (email, name, password_hash, role) "
            "SELECT 'bench-' || %s || '-' || g || '@example.com', 'Bench ' || g, %s, 'user' "
            "FROM generate_series(1, %s) g RETURNING id",
            (tag, UNUSABLE_HASH, count),
        )
        return sorted(r[0] for r in rows)

    def create_event(self, seats: int, max_per_user: int, name: str) -> int:
        return self.sql(
            "INSERT INTO events (name, venue, event_date, seat_capacity, available_seats,"
            " max_seats_per_user) VALUES (%s, 'Bench Arena', %s, %s, %s, %s) RETURNING id",
            (name, datetime.now(UTC) + timedelta(days=30), seats, seats, max_per_user),
        )[0][0]

    def vacuum(self) -> None:
        self.sql("VACUUM ANALYZE")

    def event_state(self, event_id: int) -> dict[str, Any]:
        (capacity, available, version), *_ = self.sql(
            "SELECT seat_capacity, available_seats, version FROM events WHERE id = %s", (event_id,)
        )
        counts = dict(
            self.sql(
                "SELECT status, count(*) FROM bookings WHERE event_id = %s GROUP BY status",
                (event_id,),
            )
        )
        (confirmed_seats,) = self.sql(
            "SELECT coalesce(sum(quantity), 0) FROM bookings "
            "WHERE event_id = %s AND status = 'confirmed'",
            (event_id,),
        )[0]
        violations = self.sql(
            "SELECT count(*) FROM seat_invariant_violations() WHERE event_id = %s", (event_id,)
        )[0][0]
        return {
            "capacity": capacity,
            "availableSeats": available,
            "version": version,
            "confirmedSeats": int(confirmed_seats),
            "byStatus": {k: int(v) for k, v in counts.items()},
            "invariantViolations": int(violations),
        }

    def created_times(self, event_id: int) -> dict[str, float]:
        """When each booking of the event was accepted (its transaction's start), by id."""
        rows = self.sql(
            "SELECT booking_id, extract(epoch FROM created_at) FROM bookings WHERE event_id = %s",
            (event_id,),
        )
        return {r[0]: float(r[1]) for r in rows}


class Process:
    """A child in its own process group, logging to a file; stopped by its own pid only."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log = log_dir / f"{name}.log"
        self._logfile = self.log.open("wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=self._logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for(self, check: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited; see {self.log}")
            if check():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not come up in {timeout}s; see {self.log}")

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._logfile.close()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stack:
    """uvicorn (``api_workers`` processes) and, unless told otherwise, one Celery worker."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.port = free_port()
        self.processes: list[Process] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> Stack:
        import httpx

        env = self.config.env()
        if self.config.start_worker:
            nice = ["nice", "-n", str(self.config.worker_nice)] if self.config.worker_nice else []
            worker = Process(
                "worker",
                [
                    *nice,
                    str(BIN / "celery"),
                    "-A",
                    "worker.app",
                    "worker",
                    "-Q",
                    "bookings,maintenance",
                    "--concurrency",
                    str(self.config.worker_concurrency),
                    "--hostname",
                    f"bench-{os.getpid()}@%h",
                    "--loglevel",
                    "INFO",
                    "--without-mingle",
                    "--without-gossip",
                ],  # fmt: skip
                env,
                self.config.log_dir,
            )
            self.processes.append(worker)
        # No access log: both designs pay the same, and neither pays for a line per request.
        api = Process(
            "api",
            [
                str(BIN / "uvicorn"),
                "api.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(self.config.api_workers),
                "--log-level",
                "warning",
                "--no-access-log",
            ],  # fmt: skip
            env,
            self.config.log_dir,
        )
        self.processes.append(api)

        def api_up() -> bool:
            try:
                return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        api.wait_for(api_up, 60)
        if self.config.start_worker:
            self.processes[0].wait_for(lambda: b"ready." in self.processes[0].log.read_bytes(), 60)
        # Every uvicorn worker must have its lifespan (and its Redis subscription) up.
        time.sleep(0.5 * self.config.api_workers)
        return self

    def profile(self, out: Path, rate: int = 200) -> list[subprocess.Popen[bytes]]:
        """py-spy on the API and the worker (their children too): collapsed stacks of the threads
        holding the GIL, i.e. where the Python CPU goes."""
        out.mkdir(parents=True, exist_ok=True)
        spies = []
        for process in self.processes:
            argv = [str(BIN / "py-spy"), "record", "--pid", str(process.proc.pid),
                    "--subprocesses", "--gil", "--rate", str(rate), "--format", "raw",
                    "--output", str(out / f"{process.name}.txt")]  # fmt: skip
            spies.append(
                subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        return spies

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
