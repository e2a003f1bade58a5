"""Passwords (bcrypt) and access tokens (JWT HS256 via pyjwt).

bcrypt is slow on purpose: call these from a worker thread, never on the event loop.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import bcrypt
import jwt

from common.errors import InvalidToken
from common.settings import Settings

ALGORITHM = "HS256"


@lru_cache
def dummy_hash(rounds: int) -> bytes:
    """bcrypt's time is set by the cost in the hash: a dummy of the configured cost makes an
    unknown email cost as much as a wrong password, so timing does not reveal which exist.
    Built once per cost; the API builds it at start, so no login pays for building it."""
    return bcrypt.hashpw(b"not-a-real-password", bcrypt.gensalt(rounds=rounds))


def hash_password(password: str, rounds: int) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()


def verify_password(password: str, password_hash: str | None, *, rounds: int) -> bool:
    """Check ``password``; with no hash (unknown account) check a dummy of cost ``rounds``,
    the configured ``BCRYPT_ROUNDS``, and answer False."""
    if password_hash is None:
        bcrypt.checkpw(password.encode(), dummy_hash(rounds))
        return False
    return bcrypt.checkpw(password.encode(), password_hash.encode())


def create_access_token(user_id: int, role: str, settings: Settings) -> str:
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "role": role,
        "iat": now,
        "nbf": now,
        "exp": now + timedelta(seconds=settings.JWT_EXPIRES_IN),
    }
    return jwt.encode(claims, settings.JWT_SECRET.get_secret_value(), algorithm=ALGORITHM)


def read_access_token(token: str, settings: Settings) -> tuple[int, datetime]:
    """The user id a valid token names and when it expires; InvalidToken for anything else."""
    try:
        claims = jwt.decode(
            token,
            settings.JWT_SECRET.get_secret_value(),
            algorithms=[ALGORITHM],
            options={"require": ["exp", "iat", "sub"]},
        )
        return int(claims["sub"]), datetime.fromtimestamp(claims["exp"], UTC)
    except (jwt.PyJWTError, ValueError, TypeError, OverflowError, OSError) as exc:
        raise InvalidToken() from exc


def decode_access_token(token: str, settings: Settings) -> int:
    """The user id a valid token names; InvalidToken for anything else."""
    return read_access_token(token, settings)[0]
