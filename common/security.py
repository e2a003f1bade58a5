"""Passwords (bcrypt) and access tokens (JWT HS256 via pyjwt).

bcrypt is slow on purpose: call these from a worker thread, never on the event loop.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import bcrypt
import jwt

from common.errors import InvalidToken
from common.settings import Settings

ALGORITHM = "HS256"
# Any well-formed hash compares in the same time as a real one, so an unknown email
# costs as much as a wrong password and does not reveal which accounts exist.
_DUMMY_HASH = bcrypt.hashpw(b"not-a-real-password", bcrypt.gensalt(rounds=4))


def hash_password(password: str, rounds: int) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()


def verify_password(password: str, password_hash: str | None) -> bool:
    if password_hash is None:
        bcrypt.checkpw(password.encode(), _DUMMY_HASH)
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
