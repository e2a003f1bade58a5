"""The system under test, set up by the benchmark itself: its own database and Redis db, its own
uvicorn and Celery worker processes, users and events written straight into PostgreSQL.

Nothing here touches the development database or another Redis db than the one it is given.
Starting processes and rebuilding the database is devstack's, shared with the tests.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import redis
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from bench import baseline
from devstack import (
    BIN,
    ApiProcess,
    ManagedProcess,
    WorkerProcess,
    recreate_database,
    upgrade_database,
)

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


def add_target_args(parser: argparse.ArgumentParser) -> None:
    """The database and Redis db a benchmark builds and uses (``check_targets`` guards them)."""
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "BENCH_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/ebs_bench"
        ),
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
    )
    parser.add_argument(
        "--reuse-database", action="store_true", help="migrate the database, do not recreate it"
    )


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
    """Migrate to head, then add what only the benchmark uses (the synchronous baseline's
    procedure), which the product's migrations do not carry."""
    if not reuse:
        recreate_database(database_url)
    upgrade_database(database_url)
    engine = create_engine(database_url)
    with engine.begin() as conn:
        baseline.install(conn)
    engine.dispose()


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


class Stack:
    """uvicorn (``api_workers`` processes) and, unless told otherwise, one Celery worker."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        # No access log: both designs pay the same, and neither pays for a line per request.
        # The product's app with the synchronous baseline's route (bench/main.py).
        self.api = ApiProcess(
            "api",
            config.log_dir,
            config.env(),
            workers=config.api_workers,
            access_log=False,
            app="bench.main:app",
        )
        self.processes: list[ManagedProcess] = []

    @property
    def url(self) -> str:
        return self.api.url

    @property
    def ws_url(self) -> str:
        return self.api.ws_url

    def start(self) -> Stack:
        env = self.api.env
        worker = None
        if self.config.start_worker:
            worker = WorkerProcess(
                "worker",
                self.config.log_dir,
                env,
                concurrency=self.config.worker_concurrency,
                hostname=f"bench-{os.getpid()}@%h",
                nice=self.config.worker_nice,
            ).launch()
            self.processes.append(worker)
        self.processes.append(self.api)
        self.api.start()
        if worker is not None:
            worker.wait_ready()
        # Every uvicorn worker must have its lifespan (and its Redis subscription) up.
        time.sleep(0.5 * self.config.api_workers)
        return self

    def profile(self, out: Path, rate: int = 200) -> list[subprocess.Popen[bytes]]:
        """py-spy on the API and the worker (their children too): collapsed stacks of the threads
        holding the GIL, i.e. where the Python CPU goes."""
        out.mkdir(parents=True, exist_ok=True)
        spies = []
        for process in self.processes:
            if process.proc is None:
                continue
            argv = [str(BIN / "py-spy"), "record", "--pid", str(process.proc.pid),
                    "--subprocesses", "--gil", "--rate", str(rate), "--format", "raw",
                    "--output", str(out / f"{process.name}.txt")]  # fmt: skip
            spies.append(
                subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        return spies

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop(signal.SIGTERM)  # the group: every uvicorn worker, every Celery child
