"""Issue 13, "Hold under outage, overload and attack": each defect a hostile tester found, as a
test against the real services (docs/RELIABILITY.md, "Under outage, overload and attack").
"""

from __future__ import annotations

import io
import json
import logging
import threading

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
