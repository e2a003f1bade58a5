"""Issue 13, "Hold under outage, overload and attack": each defect a hostile tester found, as a
test against the real services (docs/RELIABILITY.md, "Under outage, overload and attack").
"""

from __future__ import annotations

import io
import json
import logging
import threading

import bcrypt
import pytest
from sqlalchemy import text

from api.app import create_app
from api.middleware import request_id_var
from common.logs import configure_logging


def wait_for_lock_wait(engine, what: str) -> None:
    """Until some backend of the test database waits on a lock (the request under test)."""
    from tests.conftest import wait_until

    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock'"
    )

    def waiting() -> bool:
        with engine.connect() as conn:
            return conn.scalar(query) > 0

    wait_until(waiting, 30, what)


def test_a_booking_racing_the_events_deletion_is_404(client, engine, make_user, make_event, auth):
    """Intake reads the event, then the DELETE commits before the insert's foreign-key check:
    the client is told the event is gone (404 EVENT_NOT_FOUND), not a 500."""
    event = make_event()
    headers = auth(make_user())
    with engine.connect() as deleter:
        deleter.execute(text("DELETE FROM events WHERE id = :id"), {"id": event.id})
        answers = []
        post = threading.Thread(
            target=lambda: answers.append(
                client.post("/api/bookings", json={"eventId": event.id}, headers=headers)
            )
        )
        post.start()
        # The insert's FOR KEY SHARE on the event row waits for the uncommitted DELETE.
        wait_for_lock_wait(engine, "the booking insert to wait for the delete")
        deleter.commit()
    post.join(30)
    assert len(answers) == 1
    response = answers[0]
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "EVENT_NOT_FOUND"


def test_an_unexpected_error_still_carries_the_request_id(settings, engine):
    """A bug (any exception no handler knows) is a 500 in the envelope that still names its
    request: the X-Request-ID header, and the request id on the logged traceback."""
    from fastapi.testclient import TestClient

    app = create_app(settings)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    stream = io.StringIO()
    handler = configure_logging(
        "WARNING", service="api", context={"request_id": request_id_var.get}, stream=stream
    )
    try:
        with TestClient(app, raise_server_exceptions=False) as test_client:
            response = test_client.get("/boom", headers={"X-Request-ID": "trace-the-bug"})
    finally:
        logging.getLogger().removeHandler(handler)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "INTERNAL_ERROR"
    assert response.headers.get("x-request-id") == "trace-the-bug"
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    failures = [line for line in lines if "RuntimeError: a bug" in line.get("exc_info", "")]
    assert failures and all(line.get("request_id") == "trace-the-bug" for line in failures)


# ---------------------------------------------------------------- login and sign-up under load


def app_client(settings, **overrides):
    from fastapi.testclient import TestClient

    return TestClient(create_app(settings.model_copy(update=overrides)))


@pytest.fixture
def bcrypt_calls(monkeypatch):
    """Every bcrypt check the app makes, with the cost of the hash it compared against (a spy
    on the library; the real bcrypt still runs)."""
    calls: list[int] = []
    real = bcrypt.checkpw

    def spy(password: bytes, hashed: bytes) -> bool:
        calls.append(int(hashed.split(b"$")[2]))
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", spy)
    return calls


def test_an_unknown_email_costs_the_same_bcrypt_work_as_a_wrong_password(
    settings, engine, bcrypt_calls
):
    """The dummy hash an unknown email is checked against has the configured cost, so the two
    failures take the same time (docs/API.md); it was built with 4 rounds whatever the setting."""
    with app_client(settings, BCRYPT_ROUNDS=6) as client:
        body = {"email": "known@example.com", "name": "Known", "password": "password123"}
        assert client.post("/api/auth/register", json=body).status_code == 201
        wrong = client.post(
            "/api/auth/login", json={"email": body["email"], "password": "wrong-password"}
        )
        unknown = client.post(
            "/api/auth/login", json={"email": "nobody@example.com", "password": "password123"}
        )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert bcrypt_calls == [6, 6]
