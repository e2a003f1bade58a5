"""on_commit: a callback runs after any commit of its transaction, and never after a rollback.

Against the real database: each callback reads, on another connection, whether the row its
transaction wrote is there, so "ran" also means "ran after the commit was visible".
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from common.db import on_commit, session_scope


def _add_user(session: Session, email: str) -> None:
    session.execute(
        text("INSERT INTO users (email, name, password_hash, role) VALUES (:e, 'N', 'x', 'user')"),
        {"e": email},
    )


@pytest.fixture
def seen(engine: Engine) -> tuple[list[tuple[str, bool]], Callable[[str], Callable[[], None]]]:
    """(log, make): ``make(email)`` is a callback that logs whether the user is committed."""
    log: list[tuple[str, bool]] = []

    def make(email: str) -> Callable[[], None]:
        def callback() -> None:
            with engine.connect() as conn:
                found = conn.scalar(
                    text("SELECT count(*) FROM users WHERE email = :e"), {"e": email}
                )
            log.append((email, found == 1))

        return callback

    return log, make


def test_plain_commit_runs_the_callback_after_the_commit(
    session_factory: sessionmaker[Session], seen
) -> None:
    log, make = seen
    with session_factory() as session:
        _add_user(session, "a@example.com")
        on_commit(session, make("a@example.com"))
        assert log == []
        session.commit()
        assert log == [("a@example.com", True)]
        session.commit()  # a callback runs once
    assert log == [("a@example.com", True)]


def test_rollback_drops_the_callback(session_factory: sessionmaker[Session], seen) -> None:
    log, make = seen
    with session_factory() as session:
        _add_user(session, "b@example.com")
        on_commit(session, make("b@example.com"))
        session.rollback()
        _add_user(session, "c@example.com")
        session.commit()  # the next transaction's commit does not run the dropped one
    assert log == []


def test_close_without_commit_drops_the_callback(
    session_factory: sessionmaker[Session], seen
) -> None:
    log, make = seen
    session = session_factory()
    _add_user(session, "d@example.com")
    on_commit(session, make("d@example.com"))
    session.close()
    _add_user(session, "e@example.com")
    session.commit()
    session.close()
    assert log == []


def test_savepoint_waits_for_the_outer_commit_and_its_rollback_drops_only_its_own(
    session_factory: sessionmaker[Session], seen
) -> None:
    log, make = seen
    with session_factory() as session:
        _add_user(session, "f@example.com")
        on_commit(session, make("f@example.com"))
        with session.begin_nested():
            _add_user(session, "g@example.com")
            on_commit(session, make("g@example.com"))
        assert log == []  # releasing a savepoint commits nothing yet
        savepoint = session.begin_nested()
        _add_user(session, "h@example.com")
        on_commit(session, make("h@example.com"))
        savepoint.rollback()
        session.commit()
    assert log == [("f@example.com", True), ("g@example.com", True)]


def test_session_scope_rolls_back_and_drops_on_error(
    session_factory: sessionmaker[Session], seen
) -> None:
    log, make = seen
    with pytest.raises(RuntimeError), session_scope(session_factory) as session:
        _add_user(session, "i@example.com")
        on_commit(session, make("i@example.com"))
        raise RuntimeError
    with session_scope(session_factory) as session:
        _add_user(session, "j@example.com")
        on_commit(session, make("j@example.com"))
    assert log == [("j@example.com", True)]
