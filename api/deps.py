"""Request dependencies: what ``lifespan`` put on app.state, typed; a DB session that commits
before the response; the user.

Routes take these instead of reading ``request.app.state`` (untyped), so a reader and mypy know
what each thing is: each ``...Dep`` alias names one attribute and its type. The getters are
``async def``: they only read an attribute, and FastAPI would run a plain ``def`` dependency in
its threadpool.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, Any

import anyio
import redis
import redis.asyncio as aioredis
from celery import Celery
from fastapi import Depends
from fastapi.requests import HTTPConnection
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.hub import Hub
from api.realtime.connections import ConnectionManager
from api.seats import SeatSnapshots
from common.bookings.intake import IntakeWriter
from common.bookings.service import Signal
from common.db import session_scope
from common.errors import Unauthorized
from common.settings import Settings
from common.tokens import token_cache
from common.users import service as users_service
from common.users.models import User

bearer = HTTPBearer(auto_error=False, description="JWT from /api/auth/login")


def app_state(name: str) -> Callable[[HTTPConnection], Awaitable[Any]]:
    """A dependency returning ``app.state.<name>``, as the lifespan set it; the alias below that
    uses it says its type."""

    async def get(conn: HTTPConnection) -> Any:
        return getattr(conn.app.state, name)

    get.__name__ = f"get_{name}"
    return get


# The settings this app was built with (create_app), not the environment's get_settings().
get_app_settings = app_state("settings")

SettingsDep = Annotated[Settings, Depends(get_app_settings)]
EngineDep = Annotated[Engine, Depends(app_state("engine"))]
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(app_state("session_factory"))]
RedisDep = Annotated[redis.Redis, Depends(app_state("redis"))]  # blocking: def routes
AsyncRedisDep = Annotated[aioredis.Redis, Depends(app_state("aredis"))]  # async def routes
# common.bookings.signals.signal_event bound to the app's clients: queue a drain for an event.
SignalDep = Annotated[Signal, Depends(app_state("signal"))]
HubDep = Annotated[Hub, Depends(app_state("hub"))]
# The producer-only Celery client (api.app.build_task_sender): tasks by name, e.g. hold timers.
TaskSenderDep = Annotated[Celery, Depends(app_state("celery"))]
# At most BCRYPT_CONCURRENCY password hashes at once in this process (api/routes/auth.py).
BcryptLimiterDep = Annotated[anyio.CapacityLimiter, Depends(app_state("bcrypt_limiter"))]
RealtimeDep = Annotated[ConnectionManager, Depends(app_state("realtime"))]
# Built by api.app.start_intake: intake's group-commit writer and the events' seat snapshots.
IntakeDep = Annotated[IntakeWriter, Depends(app_state("intake"))]
SeatsDep = Annotated[SeatSnapshots, Depends(app_state("seats"))]


def get_session(factory: SessionFactoryDep) -> Iterator[Session]:
    with session_scope(factory) as session:
        yield session


# scope="function": the commit happens before the response is sent, so a 2xx is durable.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


async def token_user_id(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> int:
    if credentials is None:
        raise Unauthorized()
    return token_cache(settings).user_id(credentials.credentials)


TokenUserId = Annotated[int, Depends(token_user_id)]


def current_user(session: SessionDep, user_id: TokenUserId) -> User:
    return users_service.get_active(session, user_id)


CurrentUser = Annotated[User, Depends(current_user)]
