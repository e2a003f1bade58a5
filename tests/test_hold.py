"""Issue 13, "Hold under outage, overload and attack": each defect a hostile tester found, as a
test against the real services (docs/RELIABILITY.md, "Under outage, overload and attack").
"""

from __future__ import annotations

import threading

from sqlalchemy import text


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
