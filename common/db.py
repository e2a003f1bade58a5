"""SQLAlchemy plumbing: declarative base with a naming convention, engine and session factories.

Nothing here connects at import time; the API builds its engine in ``lifespan`` and the worker
in each child process after fork.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import DateTime, Engine, MetaData, create_engine, func
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

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


def on_commit(session: Session, callback: Callable[[], object]) -> None:
    """Run ``callback`` once the session's transaction has committed, never before.

    Tasks and pub/sub messages go out this way, so nobody hears of a row that was rolled back.
    """
    session.info.setdefault("on_commit", []).append(callback)


def commit(session: Session) -> None:
    session.commit()
    callbacks = session.info.pop("on_commit", [])
    for callback in callbacks:
        try:
            callback()
        except Exception:  # the data is committed; a lost signal is what the sweeper is for
            logger.exception("after-commit callback failed")


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success (then run on_commit callbacks), roll back on error."""
    session = factory()
    try:
        yield session
        commit(session)
    except BaseException:
        session.info.pop("on_commit", None)
        session.rollback()
        raise
    finally:
        session.close()
