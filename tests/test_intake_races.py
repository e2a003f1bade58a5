"""Intake racing other transactions: an event deleted under a booking, and the per-user
pending cap under parallel requests through several API processes.
"""

from __future__ import annotations

import threading

from sqlalchemy import text


def wait_for_lock_wait(engine, what: str) -> None:
    """Until some backend of the test database waits on a lock (the request under test)."""
    from devstack import wait_until

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


def test_the_pending_cap_is_exact_under_parallel_requests(engine, make_user, make_event, auth):
    """Issue 13: 50 parallel requests of one user against a cap of 20 let 40 through, each
    intake counting before the others had committed. Two API processes, each batching its
    requests on two writer threads, now let exactly the cap through."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from common.bookings.procedures import DRAIN_LOCK_CLASS
    from tests.conftest import ApiProcess

    cap = 20
    user = make_user()
    events = [make_event(capacity=1_000, max_per_user=10) for _ in range(5)]
    api = ApiProcess("pending-cap-api", MAX_PENDING_PER_USER=str(cap))
    api.workers = 2
    with engine.connect() as hold:
        # No drain may decide these meanwhile (a decided request frees a place under the cap):
        # a worker that gets the signal finds the events busy and leaves them pending.
        for event in events:
            hold.execute(
                text("SELECT pg_advisory_lock(:c, :e)"), {"c": DRAIN_LOCK_CLASS, "e": event.id}
            )
        api.start()
        try:
            with httpx.Client(base_url=api.url, timeout=60) as client:

                def book(n: int) -> int:
                    body = {"eventId": events[n % len(events)].id, "quantity": 1}
                    return client.post("/api/bookings", json=body, headers=auth(user)).status_code

                with ThreadPoolExecutor(50) as pool:
                    statuses = list(pool.map(book, range(50)))
        finally:
            api.stop()
            hold.execute(text("SELECT pg_advisory_unlock_all()"))
    assert sorted(set(statuses)) == [202, 429]
    assert statuses.count(202) == cap
    with engine.connect() as conn:
        stored = conn.execute(
            text("SELECT count(*) FROM bookings WHERE user_id = :u AND status = 'pending'"),
            {"u": user.id},
        ).scalar_one()
    assert stored == cap
