"""Accounts: registration, login, lookup. Services flush; the caller owns the transaction."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.bookings.models import IN_LINE, Booking
from common.errors import EmailTaken, InvalidCredentials, InvalidToken
from common.security import verify_password
from common.users.models import User
from common.users.schemas import UserCreate


def get_by_email(session: Session, email: str) -> User | None:
    return session.scalar(select(User).where(func.lower(User.email) == email.lower()))


def register(session: Session, data: UserCreate, *, password_hash: str, role: str = "user") -> User:
    """Store a new account. ``password_hash`` comes from ``hash_password``, run before the
    transaction: bcrypt must not hold a pooled connection idle in a transaction."""
    if get_by_email(session, data.email) is not None:
        raise EmailTaken(details=[{"field": "email", "message": "already registered"}])
    user = User(
        email=data.email.lower(),
        name=data.name,
        password_hash=password_hash,
        role=role,
    )
    session.add(user)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError as exc:  # two registrations raced for the same email
        raise EmailTaken(details=[{"field": "email", "message": "already registered"}]) from exc
    return user


def check_password(user: User | None, password: str, *, bcrypt_rounds: int) -> User:
    """The user, if ``password`` is theirs; InvalidCredentials otherwise, after the same bcrypt
    work for an unknown account (``user`` None) as for a wrong password. No database: call it
    with no transaction open."""
    hashed = user.password_hash if user else None
    if not verify_password(password, hashed, rounds=bcrypt_rounds) or user is None:
        raise InvalidCredentials()
    return user


def waits_in_line(session: Session, user_id: int) -> bool | None:
    """None if the user is gone; else whether they have a request in a line (pending or
    waitlisted): one query that tells a WebSocket both whether to let them in and whether
    their places in line need reading."""
    waiting = (
        select(Booking.booking_id)
        .where(Booking.user_id == User.id, Booking.status.in_(IN_LINE))
        .exists()
    )
    row = session.execute(select(waiting).where(User.id == user_id)).first()
    return None if row is None else bool(row[0])


def get_active(session: Session, user_id: int) -> User:
    """The user a token names; a token for a deleted user is no longer valid."""
    user = session.get(User, user_id)
    if user is None:
        raise InvalidToken()
    return user
