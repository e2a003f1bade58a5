"""The FastAPI application: ``create_app()`` wires routes, errors and middleware; ``lifespan``
builds every connection (engine, Redis, Celery producer, the pub/sub hub) and closes them."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
from celery import Celery
from fastapi import FastAPI
from sqlalchemy import Engine

from api import errors, lean_path, metrics
from api.hub import STOP_TIMEOUT, Hub, within
from api.middleware import (
    AllowedHostsMiddleware,
    BodyLimitMiddleware,
    EnvelopeCORSMiddleware,
    RequestIdMiddleware,
)
from api.realtime.connections import ConnectionManager
from api.realtime.fanout import dispatch, install
from api.realtime.frames import RawSend
from api.realtime.shutdown import close_all
from api.realtime.signals import close_on_signals
from api.routes import (
    auth,
    booking_lists,
    bookings,
    dashboard,
    events,
    health,
    pages,
    payments,
    webhooks,
    ws,
)
from api.seats import SeatSnapshots
from common.bookings.intake import IntakeWriter
from common.bookings.signals import signal_event
from common.db import bound_waits, build_engine, build_sessionmaker
from common.redis_client import build_async_redis, build_redis, build_signal_redis
from common.security import dummy_hash
from common.settings import Settings, get_settings
from common.tokens import token_cache

logger = logging.getLogger(__name__)


def build_task_sender(settings: Settings) -> Celery:
    """A producer-only Celery client: the API sends tasks by name and imports nothing of
    ``worker/``; the worker's Celery app is the only one that registers tasks."""
    client = Celery("ebs-api", set_as_current=False)
    client.config_from_object("celeryconfig")
    client.conf.broker_url = settings.broker_url
    # Used for booking signals only: bounded like them, and not retried (see build_signal_redis).
    client.conf.broker_connection_timeout = settings.SIGNAL_TIMEOUT
    if settings.broker_url.startswith(("redis://", "rediss://")):
        client.conf.broker_transport_options = {
            **client.conf.broker_transport_options,
            "socket_timeout": settings.SIGNAL_TIMEOUT,
            "socket_connect_timeout": settings.SIGNAL_TIMEOUT,
        }
    client.conf.task_publish_retry = False
    return client


def build_api_engine(settings: Settings) -> Engine:
    """The API's engine, with every wait on PostgreSQL bounded: opening a connection, waiting
    for a free one in the pool, a statement, a lock. A database that cannot take a request
    costs it at most these bounds and a 503 with Retry-After, not a threadpool slot held
    indefinitely (docs/configuration.md, "Database pool")."""
    server_limits = (
        f"-c statement_timeout={round(settings.DB_STATEMENT_TIMEOUT * 1000)} "
        f"-c lock_timeout={round(settings.DB_LOCK_TIMEOUT * 1000)}"
    )
    return build_engine(
        settings,
        pool_timeout=settings.DB_POOL_TIMEOUT,
        connect_args={"connect_timeout": settings.DB_CONNECT_TIMEOUT, "options": server_limits},
    )


def start_intake(state: Any) -> None:
    """What the booking routes share, on either path: the seat snapshots (``api.seats``), the
    group-commit writer (``common.bookings.intake``), the token cache, and the threadpool
    sized to the database pool so no thread waits on a connection that is not there."""
    settings: Settings = state.settings
    # No more threads than pooled connections: a thread beyond the pool opens an overflow
    # connection and closes it on return, a new PostgreSQL session per request under load.
    threads = settings.API_THREADS or settings.DB_POOL_SIZE
    anyio.to_thread.current_default_thread_limiter().total_tokens = threads
    state.tokens = token_cache(settings)
    state.seats = SeatSnapshots(state.session_factory, settings.SEAT_SNAPSHOT_MAX_AGE)
    state.hub.add_listener(state.seats.on_message)
    state.intake = IntakeWriter(
        state.session_factory,
        state.signal,
        max_pending=settings.MAX_PENDING_PER_USER,
        max_line=settings.QUEUE_MAX_PER_EVENT,
        window=settings.INTAKE_BATCH_WINDOW,
        batch_size=settings.INTAKE_BATCH_SIZE,
        writers=settings.INTAKE_WRITERS,
        observe=state.seats.observe,
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    state = app.state  # each attribute is read, typed, by one dependency in api/deps.py
    bound_waits(settings)
    state.engine = build_api_engine(settings)
    state.session_factory = build_sessionmaker(state.engine)
    state.redis = build_redis(settings)
    state.aredis = build_async_redis(settings)
    state.celery = build_task_sender(settings)
    state.bcrypt_limiter = anyio.CapacityLimiter(settings.BCRYPT_CONCURRENCY)
    await anyio.to_thread.run_sync(dummy_hash, settings.BCRYPT_ROUNDS)
    state.signal_redis = build_signal_redis(settings)
    state.signal = partial(signal_event, state.signal_redis, state.celery, ttl=settings.SIGNAL_TTL)
    state.hub = Hub(state.aredis)
    state.realtime = ConnectionManager(settings, state.session_factory, state.hub)
    install(state.realtime)
    state.hub.add_listener(partial(dispatch, state.realtime))
    start_intake(state)
    if settings.LEAN_PATH and isinstance(app, lean_path.App):
        lean_path.install(app)
    await state.hub.start()
    restore_signals = close_on_signals(state.realtime)
    try:
        yield
    finally:
        restore_signals()
        await close_all(state.realtime)
        if isinstance(app, lean_path.App):
            lean_path.uninstall(app)
        state.intake.close()
        await state.hub.stop()
        # Bounded for the same redis-py stalls as the Hub's subscription (see hub.within).
        await within(STOP_TIMEOUT, state.aredis.aclose())
        state.redis.close()
        state.signal_redis.close()
        state.engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = lean_path.App(
        title="Event Booking System",
        version="0.1.0",
        description=(
            "Task-queue backed event booking. Booking and cancellation requests are stored, "
            "answered with 202 and decided by workers; poll, send `Prefer: wait=N`, or listen "
            "on the WebSocket at `/ws`."
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    errors.install(app)
    for router in (
        health.router,
        auth.router,
        events.router,
        bookings.router,
        booking_lists.router,
        webhooks.router,
        dashboard.router,
        payments.router,
        metrics.router,
        pages.router,
    ):
        app.include_router(router)
    app.include_router(ws.router)
    app.add_middleware(
        EnvelopeCORSMiddleware,
        allow_origins=settings.CORS_ORIGINS,
        allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Prefer"],
        expose_headers=["Location", "Preference-Applied", "X-Request-ID", "Retry-After"],
    )
    app.add_middleware(BodyLimitMiddleware, body_timeout=settings.HTTP_BODY_TIMEOUT)
    app.add_middleware(AllowedHostsMiddleware, allowed=settings.ALLOWED_HOSTS)
    app.add_middleware(RequestIdMiddleware)
    # Outermost, so its timing and status cover every other layer (413s, CORS, errors).
    app.add_middleware(metrics.MetricsMiddleware)
    # Outside even that: it only notes each WebSocket's own send (api/realtime/frames.py).
    app.add_middleware(RawSend)
    return app
