"""SQLAlchemy plumbing: declarative base with a naming convention, engine and session factories.

Nothing here connects at import time; the API builds its engine in ``lifespan`` and the worker
in each child process after fork.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

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
