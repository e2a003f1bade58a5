"""Sign-up, login and the current user.

bcrypt is slow on purpose (~240 ms at cost 12), so these routes never run it inside a
transaction: login reads the user and gives its connection back before checking the password,
sign-up hashes before it opens one. Hashing runs on a worker thread, at most
``BCRYPT_CONCURRENCY`` at once per process; the rest wait on the event loop, holding no thread
and no connection, so a login flood cannot starve booking intake.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import anyio
from fastapi import APIRouter, Request, status
from starlette.concurrency import run_in_threadpool

from api.deps import BcryptLimiterDep, CurrentUser, RedisDep, SessionFactoryDep, SettingsDep
from api.envelope import Envelope, error_responses, ok
from common import ratelimit
from common.db import session_scope
from common.errors import TooManyLoginAttempts, TooManySignUps
from common.ratelimit import Limit
from common.security import create_access_token, hash_password
from common.users import service
from common.users.models import User
from common.users.schemas import AuthRead, UserCreate, UserLogin, UserRead

router = APIRouter(prefix="/api/auth", tags=["auth"])


def _auth_payload(user, settings) -> dict:  # type: ignore[no-untyped-def]
    token = create_access_token(user.id, user.role, settings)
    return AuthRead(user=UserRead.model_validate(user), token=token).model_dump(by_alias=True)


async def _bcrypt(limiter: anyio.CapacityLimiter, func: Any, *args: Any, **kwargs: Any) -> Any:
    """``func(...)`` on a worker thread once one of the process's bcrypt slots is free."""
    return await anyio.to_thread.run_sync(partial(func, *args, **kwargs), limiter=limiter)


def _address(request: Request) -> str:
    # The peer uvicorn reports: X-Forwarded-For only from FORWARDED_ALLOW_IPS (docs/OPERATIONS.md).
    return request.client.host if request.client else "unknown"


def _create_user(factory: SessionFactoryDep, data: UserCreate, password_hash: str) -> User:
    with session_scope(factory) as session:
        return service.register(session, data, password_hash=password_hash)


def _find_user(factory: SessionFactoryDep, email: str) -> User | None:
    with session_scope(factory) as session:
        return service.get_by_email(session, email)


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    response_model=Envelope[AuthRead],
    responses=error_responses(400, 409, 413, 429),
)
async def register(
    body: UserCreate,
    request: Request,
    settings: SettingsDep,
    factory: SessionFactoryDep,
    redis_client: RedisDep,
    limiter: BcryptLimiterDep,
) -> dict:
    """Create an account with the role `user`; admins come from `ebs users create-admin`.
    Throttled per client address before any hashing: 429 ``TOO_MANY_SIGNUPS`` with
    ``Retry-After`` once a window's attempts are used."""
    limit = Limit(
        "signup:address",
        _address(request),
        settings.SIGNUP_ATTEMPTS_PER_ADDRESS,
        settings.SIGNUP_WINDOW,
    )
    await run_in_threadpool(ratelimit.hit, redis_client, [limit], TooManySignUps)
    password_hash = await _bcrypt(limiter, hash_password, body.password, settings.BCRYPT_ROUNDS)
    user = await run_in_threadpool(_create_user, factory, body, password_hash)
    return ok(_auth_payload(user, settings))


@router.post(
    "/login", response_model=Envelope[AuthRead], responses=error_responses(400, 401, 413, 429)
)
async def login(
    body: UserLogin,
    request: Request,
    settings: SettingsDep,
    factory: SessionFactoryDep,
    redis_client: RedisDep,
    limiter: BcryptLimiterDep,
) -> dict:
    """Throttled per account and per client address before any password is checked:
    429 ``TOO_MANY_LOGIN_ATTEMPTS`` with ``Retry-After`` once a window's attempts are used."""
    window = settings.LOGIN_WINDOW
    limits = [
        Limit("login:account", body.email.lower(), settings.LOGIN_ATTEMPTS_PER_ACCOUNT, window),
        Limit("login:address", _address(request), settings.LOGIN_ATTEMPTS_PER_ADDRESS, window),
    ]
    await run_in_threadpool(ratelimit.hit, redis_client, limits, TooManyLoginAttempts)
    found = await run_in_threadpool(_find_user, factory, body.email)
    user = await _bcrypt(
        limiter, service.check_password, found, body.password, bcrypt_rounds=settings.BCRYPT_ROUNDS
    )
    return ok(_auth_payload(user, settings))


@router.get("/me", response_model=Envelope[UserRead], responses=error_responses(401))
def me(user: CurrentUser) -> dict:
    return ok(UserRead.model_validate(user))
