"""The pipeline under concurrency and repeated delivery: real uvicorn, real Celery workers."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest
from celery import Celery
from sqlalchemy import text

from common.tasks import BOOKINGS_QUEUE, PROCESS_EVENT
from devstack import wait_until
from tests.conftest import BeatProcess


def decided_counts(db, event_id: int) -> Counter[str]:
    rows = db.execute(
        text("SELECT status, reason FROM bookings WHERE event_id = :e"), {"e": event_id}
    ).all()
    return Counter(f"{s}:{r}" if r else s for s, r in rows)


def assert_invariant(db) -> None:
    assert db.execute(text("SELECT * FROM seat_invariant_violations()")).all() == []


def assert_one_decision_per_booking(db, event_id: int) -> None:
    rows = db.execute(
        text(
            "SELECT b.booking_id, count(l.id) FROM bookings b"
            " LEFT JOIN booking_logs l ON l.booking_id = b.booking_id"
            "  AND l.action IN ('confirmed', 'rejected')"
            " WHERE b.event_id = :e GROUP BY b.booking_id"
        ),
        {"e": event_id},
    ).all()
    assert rows and all(count == 1 for _, count in rows), rows


@pytest.fixture
def producer(settings):
    app = Celery("test-producer", set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = settings.broker_url
    yield app
    app.close()


def test_200_concurrent_requests_for_the_last_10_seats(
    api_server, make_user, make_event, token_for, db
):
    event = make_event(capacity=10)
    tokens = [token_for(make_user()) for _ in range(200)]

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=api_server.url, timeout=60, limits=limits) as http:
            return await asyncio.gather(
                *(
                    http.post(
                        "/api/bookings",
                        json={"eventId": event.id},
                        headers={"Authorization": f"Bearer {token}", "Prefer": "wait=30"},
                    )
                    for token in tokens
                )
            )

    responses = asyncio.run(run())
    assert {r.status_code for r in responses} <= {201, 202, 409}, Counter(
        r.status_code for r in responses
    )
    # Every stored booking is decided; an answer still pending after the wait is decided soon.
    wait_until(lambda: decided_counts(db, event.id)["pending"] == 0, 60, "all decided")
    counts = decided_counts(db, event.id)
    assert counts["confirmed"] == 10
    assert set(counts) <= {"confirmed", "rejected:sold_out"}
    # What each client was told agrees with the database; requests refused at intake (the
    # event already showed no seats) stored nothing.
    stored = dict(
        db.execute(
            text("SELECT booking_id, status FROM bookings WHERE event_id = :e"), {"e": event.id}
        ).all()
    )
    told_sold_out = 0
    for response in responses:
        body = response.json()
        if response.status_code == 201:
            assert stored[body["data"]["bookingId"]] == "confirmed"
        elif response.status_code == 202:
            told_sold_out += stored[body["data"]["bookingId"]] == "rejected"
        else:
            assert body["error"]["code"] == "SOLD_OUT"
            told_sold_out += 1
            detail = body["error"]["details"][0]
            if "bookingId" in detail:
                assert stored[detail["bookingId"]] == "rejected"
    assert told_sold_out == 190
    available = db.execute(
        text("SELECT available_seats FROM events WHERE id = :e"), {"e": event.id}
    ).scalar_one()
    assert available == 0
    assert_invariant(db)
    assert_one_decision_per_booking(db, event.id)


def insert_pending(db, event_id: int, user_ids: list[int], quantity: int = 1) -> None:
    db.execute(
        text(
            "INSERT INTO bookings (booking_id, user_id, event_id, quantity)"
            " SELECT 'bk_' || md5(random()::text), u, :e, :q FROM unnest(CAST(:users AS int[])) u"
        ),
        {"e": event_id, "q": quantity, "users": user_ids},
    )
    db.commit()


def snapshot(db, event_id: int) -> tuple:
    db.expire_all()
    event = db.execute(
        text("SELECT available_seats, version FROM events WHERE id = :e"), {"e": event_id}
    ).one()
    logs = db.execute(
        text("SELECT count(*) FROM booking_logs WHERE event_id = :e"), {"e": event_id}
    ).scalar_one()
    return tuple(event), logs, decided_counts(db, event_id)


def test_a_task_delivered_five_times_has_one_effect(worker, producer, make_user, make_event, db):
    users = [make_user().id for _ in range(30)]
    parallel_event = make_event(capacity=20)
    sequential_event = make_event(capacity=20)
    insert_pending(db, parallel_event.id, users)
    insert_pending(db, sequential_event.id, users)

    # In parallel: five deliveries of the same task at once.
    for _ in range(5):
        producer.send_task(PROCESS_EVENT, args=[parallel_event.id], queue=BOOKINGS_QUEUE)
    wait_until(lambda: decided_counts(db, parallel_event.id)["pending"] == 0, 60, "decided")
    # In sequence: one delivery, then four more after it finished.
    producer.send_task(PROCESS_EVENT, args=[sequential_event.id], queue=BOOKINGS_QUEUE)
    wait_until(lambda: decided_counts(db, sequential_event.id)["pending"] == 0, 60, "decided")
    before = snapshot(db, sequential_event.id)
    for _ in range(4):
        producer.send_task(PROCESS_EVENT, args=[sequential_event.id], queue=BOOKINGS_QUEUE)
    # A marker task queued behind the repeats: once it is done, so are they.
    marker = make_event(capacity=1)
    insert_pending(db, marker.id, users[:1])
    producer.send_task(PROCESS_EVENT, args=[marker.id], queue=BOOKINGS_QUEUE)
    wait_until(lambda: decided_counts(db, marker.id)["pending"] == 0, 60, "marker")
    wait_until(lambda: worker_idle(producer), 60, "worker idle")

    for event in (parallel_event, sequential_event):
        (available, version), logs, counts = snapshot(db, event.id)
        assert counts == {"confirmed": 20, "rejected:sold_out": 10}
        assert available == 0 and logs == 30
        assert_one_decision_per_booking(db, event.id)
    assert snapshot(db, sequential_event.id) == before
    assert_invariant(db)


def worker_idle(producer: Celery) -> bool:
    active = producer.control.inspect(timeout=2).active() or {}
    return bool(active) and all(not tasks for tasks in active.values())


def test_the_sweeper_decides_a_booking_whose_signal_was_lost(worker, make_user, make_event, db):
    event = make_event(capacity=5)
    # Committed but never signalled, as if Redis lost the task.
    insert_pending(db, event.id, [make_user().id], quantity=2)
    beat = BeatProcess("beat").start()
    try:
        wait_until(lambda: decided_counts(db, event.id)["pending"] == 0, 90, "sweeper")
    finally:
        beat.stop()
    assert decided_counts(db, event.id) == {"confirmed": 1}
    assert_invariant(db)
