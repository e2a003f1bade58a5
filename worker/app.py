"""The one Celery application. Tasks are in ``worker.tasks``; configuration in ``celeryconfig``.

Connections are made per process, after fork (``worker_process_init``), never at import.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass

import redis
from celery import Celery
from celery._state import get_current_task
from celery.signals import setup_logging, worker_process_init, worker_process_shutdown
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from common.db import bound_waits, build_engine, build_sessionmaker
from common.logs import configure_logging
from common.redis_client import build_redis
from common.settings import Settings, get_settings

logger = logging.getLogger(__name__)

app = Celery("ebs", include=["worker.tasks", "worker.webhooks"])
app.config_from_object("celeryconfig")


@dataclass
class Resources:
    pid: int
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    redis: redis.Redis
    name: str


_resources: Resources | None = None

# A worker host that drops off the network mid-batch (no FIN, no RST) leaves its transaction
# open on the server, holding the event row lock that every other drain of the event waits for,
# and PostgreSQL notices a vanished client only by TCP keepalive (hours by default): every
# worker slot ended up waiting on it (tests/test_network_faults.py, the multi-host sale). A
# worker never waits between a batch's statements, so the server ends such a session and rolls
# it back. Keepalives let the worker, in turn, give up on a server it can no longer reach.
DB_SESSION: dict[str, object] = {
    "options": "-c idle_in_transaction_session_timeout=10s",
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


def resources() -> Resources:
    """This process's connections, made on first use after fork and never shared across one."""
    global _resources
    if _resources is None or _resources.pid != os.getpid():
        settings = get_settings()
        # No ping per checkout (a round trip per batch): a dead connection raises
        # OperationalError, which the tasks retry, and the pool then replaces it.
        engine = build_engine(
            settings, pool_size=2, max_overflow=2, pool_pre_ping=False, connect_args=DB_SESSION
        )
        bound_waits(settings)  # a frozen database fails the task (retried), never hangs it
        _resources = Resources(
            pid=os.getpid(),
            settings=settings,
            engine=engine,
            session_factory=build_sessionmaker(engine),
            redis=build_redis(settings),
            name=worker_name(),
        )
    return _resources


def worker_name() -> str:
    """``host:pid``: the name written to booking_logs and to every log line of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _current_task() -> tuple[str | None, str | None]:
    task = get_current_task()  # what Celery's own TaskFormatter reads
    if task is None or task.request.id is None:
        return None, None
    return task.request.id, task.name


def _cli_loglevel_given() -> bool:
    return any(a in ("-l", "--loglevel") or a.startswith(("--loglevel=", "-l")) for a in sys.argv)


@setup_logging.connect
def _setup_logging(loglevel: int | str | None = None, **_: object) -> None:
    """JSON lines for the worker and beat. Connecting this signal stops Celery from setting up
    its own handlers. ``LOG_LEVEL`` decides the level unless ``--loglevel`` is given."""
    level = loglevel if loglevel is not None and _cli_loglevel_given() else get_settings().LOG_LEVEL
    configure_logging(
        level,
        service="beat" if "beat" in sys.argv else "worker",
        context={
            "worker": worker_name,
            "task_id": lambda: _current_task()[0],
            "task": lambda: _current_task()[1],
        },
    )


@worker_process_init.connect
def _init_process(**_: object) -> None:
    resources()


@worker_process_shutdown.connect
def _close_process(**_: object) -> None:
    global _resources
    if _resources is not None and _resources.pid == os.getpid():
        _resources.engine.dispose()
        _resources.redis.close()
        _resources = None
