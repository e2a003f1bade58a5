"""A database that cannot take a request (no free connection, a lock held too long) answers 503
with Retry-After, bounded, and nothing is written."""

from __future__ import annotations

from sqlalchemy import text

from tests.app_support import app_client, in_thread


def test_a_request_that_finds_the_pool_empty_is_503(settings, engine, make_user, make_event, auth):
    """Every connection of the pool busy past DB_POOL_TIMEOUT: 503 with Retry-After in the
    envelope (it was a 500), and nothing written."""
    event = make_event()
    headers = auth(make_user())
    with app_client(settings, DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, DB_POOL_TIMEOUT=0.2) as client:
        with client.app.state.engine.connect():  # the pool's only connection
            response = client.post("/api/bookings", json={"eventId": event.id}, headers=headers)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert int(response.headers["Retry-After"]) > 0
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM bookings")) == 0


def test_a_lock_held_past_the_lock_timeout_is_503(settings, engine, make_user, make_event, auth):
    """A booking whose event row is locked (a stuck batch, a migration) waits DB_LOCK_TIMEOUT,
    then is 503 with Retry-After, and nothing of it is written. Before, it waited for as long
    as the lock was held, holding a connection and a thread."""
    event = make_event()
    headers = auth(make_user())
    with app_client(settings, DB_LOCK_TIMEOUT=0.2) as client, engine.connect() as locker:
        locker.execute(text("SELECT 1 FROM events WHERE id = :id FOR UPDATE"), {"id": event.id})
        thread, answers = in_thread(
            lambda: client.post("/api/bookings", json={"eventId": event.id}, headers=headers)
        )
        thread.join(60)  # a hang guard: without a lock timeout it waits for the lock
        answered_while_locked = answers[0] if answers else None
        locker.rollback()
        thread.join(60)
    assert answered_while_locked is not None, "the booking waited as long as the lock was held"
    assert answered_while_locked.status_code == 503, answered_while_locked.text
    assert int(answered_while_locked.headers["Retry-After"]) > 0
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM bookings")) == 0
