"""SQLAlchemy plumbing: declarative base with a naming convention, engine and session factories.

Nothing here connects at import time; the API builds its engine in ``lifespan`` and the worker
in each child process after fork.
"""

from __future__ import annotations

import logging
import select
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import partial

import psycopg2
from psycopg2 import extensions
from sqlalchemy import DateTime, Engine, MetaData, create_engine, event, func
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    SessionTransaction,
    mapped_column,
    sessionmaker,
)

from common.settings import Settings

logger = logging.getLogger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )


def build_engine(settings: Settings, **overrides: object) -> Engine:
    options: dict[str, object] = {
        "pool_size": settings.DB_POOL_SIZE,
        "max_overflow": settings.DB_MAX_OVERFLOW,
        "pool_pre_ping": True,
        "pool_recycle": 1800,
    }
    options.update(overrides)
    return create_engine(settings.sqlalchemy_url, **options)


def bound_waits(settings: Settings) -> None:
    """Bound every wait of this process on PostgreSQL on the client side: give up on a
    connection from which nothing arrives for ``DB_REPLY_TIMEOUT`` seconds
    (``DB_CONNECT_TIMEOUT`` while connecting).

    PostgreSQL's own timeouts cannot end a wait on a server that has stopped answering (a
    frozen process, a hung host, a dead link): the server enforces them. TCP keepalives and
    ``tcp_user_timeout`` do not see a frozen server either, its kernel still acknowledging
    every packet. So libpq's waiting is done here, through psycopg2's wait callback (its
    "green" mode, in which libpq ignores its own ``connect_timeout``). When the callback gives
    up, psycopg2 closes the connection and raises ``OperationalError``; SQLAlchemy takes the
    closed connection for a disconnect and drops it from the pool. Process-wide, as psycopg2's
    callback is: the API calls it in its lifespan, the worker in each child.
    """
    extensions.set_wait_callback(
        partial(_wait, settings.DB_CONNECT_TIMEOUT, settings.DB_REPLY_TIMEOUT)
    )


_CONNECTION_OK = 0  # libpq's PQstatus once connected (psycopg2 exports no name for it)


def _wait(connect_timeout: float, reply_timeout: float, conn: extensions.connection) -> None:
    while True:
        state = conn.poll()
        if state == extensions.POLL_OK:
            return
        timeout = reply_timeout if conn.info.status == _CONNECTION_OK else connect_timeout
        poller = select.poll()  # not select.select: the API's descriptors can pass 1024
        events = select.POLLIN if state == extensions.POLL_READ else select.POLLOUT
        poller.register(conn.fileno(), events)
        if not poller.poll(timeout * 1000):
            raise psycopg2.OperationalError(f"PostgreSQL did not answer within {timeout:g} s")


def build_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


_CALLBACKS = "on_commit"  # session.info key: [(transaction it was registered in, callback)]


def on_commit(session: Session, callback: Callable[[], object]) -> None:
    """Run ``callback`` once the session's outermost transaction has committed, never before;
    drop it if that transaction (or the savepoint it was registered in) rolls back or is closed
    without a commit.

    Tasks and pub/sub messages go out this way, so nobody hears of a row that was rolled back.
    Any ``session.commit()`` runs them (the session events below), not only ``session_scope``.
    A callback must not use the session: after_commit allows no SQL.
    """
    innermost = session.get_nested_transaction() or session.get_transaction()
    session.info.setdefault(_CALLBACKS, []).append((innermost, callback))


def _inside(transaction: SessionTransaction | None, ended: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is ended:
            return True
        transaction = transaction.parent
    return False


@event.listens_for(Session, "after_commit")
def _run_callbacks(session: Session) -> None:
    if session.in_nested_transaction():  # a savepoint released: the outer one may still roll back
        return
    for _, callback in session.info.pop(_CALLBACKS, []):
        try:
            callback()
        except Exception:  # the data is committed; a lost signal is what the sweeper is for
            logger.exception("after-commit callback failed")


@event.listens_for(Session, "after_soft_rollback")
def _drop_rolled_back(session: Session, previous_transaction: SessionTransaction) -> None:
    pending = session.info.get(_CALLBACKS)
    if pending:
        pending[:] = [(t, c) for t, c in pending if not _inside(t, previous_transaction)]


@event.listens_for(Session, "after_transaction_end")
def _drop_uncommitted(session: Session, transaction: SessionTransaction) -> None:
    # Closed without a commit (session.close() does not roll back through the events above);
    # after a commit the list is already empty.
    if transaction.parent is None:
        session.info.pop(_CALLBACKS, None)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success (which runs on_commit callbacks), roll back on error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
