"""Passwords (bcrypt) and access tokens (JWT HS256 via pyjwt).

bcrypt is slow on purpose: call these from a worker thread, never on the event loop.

``CLAIMS`` is the one claim policy of an access token: the claims it must carry, the clock
skew forgiven, the largest user id ``sub`` may name and the last moment a token may be valid
until. PyJWT's check (``read_access_token``, also the WebSocket sign-in's) and the hand-written
one (``common.tokens``) both read it; ``tests/test_tokens.py`` holds them to one verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property, lru_cache
from typing import Any

import bcrypt
import jwt

from common.errors import InvalidToken
from common.settings import Settings

ALGORITHM = "HS256"


@dataclass(frozen=True)
class ClaimPolicy:
    required: tuple[str, ...] = ("exp", "iat", "sub")
    leeway: int = 0  # seconds of clock skew forgiven on exp, nbf and iat: one host signs
    max_user_id: int = 2**31 - 1  # users.id is a PostgreSQL integer
    # 9999-12-31T23:59:59Z: the last second a datetime (the WebSocket's deadline) holds.
    max_valid_until: int = int(datetime.max.replace(microsecond=0, tzinfo=UTC).timestamp())

    def user_id(self, sub: object) -> int | None:
        """The user ``sub`` names, spelled as create_access_token writes it; None: refuse.

        Only the decimal digits of 1..max_user_id, no sign, space, leading zero or non-ASCII
        digit, so one user has one spelling and a larger number never reaches the database.
        """
        if (
            type(sub) is not str
            or not sub.isascii()
            or not sub.isdigit()
            or sub[0] == "0"
            or len(sub) > self._user_id_digits
        ):
            return None
        user_id = int(sub)
        return user_id if user_id <= self.max_user_id else None

    @cached_property
    def _user_id_digits(self) -> int:
        return len(str(self.max_user_id))

    def valid_until(self, exp: object) -> float | None:
        """Until when (a Unix time) a token of this ``exp`` is accepted; None: refuse.

        Takes what has passed PyJWT's own check of ``exp`` (a number, not yet past)."""
        if type(exp) not in (int, float):
            return None
        until = exp + self.leeway  # type: ignore[operator]  # a number: checked above
        return float(until) if until <= self.max_valid_until else None


CLAIMS = ClaimPolicy()


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
    """The user id a valid token names and until when it is valid (``exp`` and the policy's
    leeway); InvalidToken for anything else."""
    try:
        claims = jwt.decode(
            token,
            settings.JWT_SECRET.get_secret_value(),
            algorithms=[ALGORITHM],
            options={"require": list(CLAIMS.required)},
            leeway=CLAIMS.leeway,
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken() from exc
    user_id, until = CLAIMS.user_id(claims["sub"]), CLAIMS.valid_until(claims["exp"])
    if user_id is None or until is None:
        raise InvalidToken()
    return user_id, datetime.fromtimestamp(until, UTC)
