"""Request dependencies: what ``lifespan`` put on app.state, typed; a DB session that commits
before the response; the user.

Routes take these instead of reading ``request.app.state`` (untyped), so a reader and mypy know
what each thing is. The getters are ``async def``: they only read an attribute, and FastAPI would
run a plain ``def`` dependency in its threadpool.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import redis
import redis.asyncio as aioredis
from fastapi import Depends
from fastapi.requests import HTTPConnection
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.hub import Hub
from api.realtime.connections import ConnectionManager
from common.bookings.service import Signal
from common.db import session_scope
from common.errors import Unauthorized
from common.security import decode_access_token
from common.settings import Settings
from common.users import service as users_service
from common.users.models import User

bearer = HTTPBearer(auto_error=False, description="JWT from /api/auth/login")


async def get_app_settings(conn: HTTPConnection) -> Settings:
    """The settings this app was built with (``create_app``), not the environment's."""
    settings: Settings = conn.app.state.settings
    return settings


async def get_engine(conn: HTTPConnection) -> Engine:
    engine: Engine = conn.app.state.engine
    return engine


async def get_session_factory(conn: HTTPConnection) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = conn.app.state.session_factory
    return factory


async def get_redis(conn: HTTPConnection) -> redis.Redis:
    """The blocking client: for plain ``def`` routes and the threadpool."""
    client: redis.Redis = conn.app.state.redis
    return client


async def get_async_redis(conn: HTTPConnection) -> aioredis.Redis:
    """The asyncio client: for ``async def`` routes."""
    client: aioredis.Redis = conn.app.state.aredis
    return client


async def get_signal(conn: HTTPConnection) -> Signal:
    """Queue a drain task for an event (``common.bookings.signals.signal_event``, bound)."""
    signal: Signal = conn.app.state.signal
    return signal


async def get_hub(conn: HTTPConnection) -> Hub:
    hub: Hub = conn.app.state.hub
    return hub


async def get_realtime(conn: HTTPConnection) -> ConnectionManager:
    manager: ConnectionManager = conn.app.state.realtime
    return manager


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
AsyncRedisDep = Annotated[aioredis.Redis, Depends(get_async_redis)]
SignalDep = Annotated[Signal, Depends(get_signal)]
HubDep = Annotated[Hub, Depends(get_hub)]
RealtimeDep = Annotated[ConnectionManager, Depends(get_realtime)]


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
    return decode_access_token(credentials.credentials, settings)


TokenUserId = Annotated[int, Depends(token_user_id)]


def current_user(session: SessionDep, user_id: TokenUserId) -> User:
    return users_service.get_active(session, user_id)


CurrentUser = Annotated[User, Depends(current_user)]
