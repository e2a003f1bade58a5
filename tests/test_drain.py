"""One drain per event at a time, and nothing stranded by it (common/bookings/signals.py).

A task that finds its event being drained leaves at once, so one hot event cannot hold every
worker slot; the drain holding the event reads again for what arrived meanwhile; the sweeper
passes over events being drained; and the decider's updates touch only rows still pending.

Interleavings are made certain, not hoped for: the test holds a row lock on a pending booking,
so a drain stops inside ``process_event_queue`` (its batch chosen, nothing committed) until the
test lets it go. Tasks sent here go to a private redis-server (with RabbitMQ, a vhost of the
test's own), where no other test's worker can take them.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest
import redis
from celery import Celery
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

from common.bookings import procedures
from common.bookings.drain import Drained, drain_event
from common.bookings.signals import signal_event, take_signal
from common.bookings.sweeper import pending_event_ids
from common.db import session_scope
from common.tasks import BOOKINGS_QUEUE, PROCESS_EVENT
from devstack import RedisServer, wait_until
from tests.conftest import WorkerProcess
from tests.test_pipeline import assert_invariant, assert_one_decision_per_booking, insert_pending

SETTLE = 300  # seconds; a hang guard only


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def producer(private_redis: RedisServer, private_broker: dict[str, str]) -> Iterator[Celery]:
    app = Celery("test-drain", set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = private_broker.get("CELERY_BROKER_URL", private_redis.url)
    yield app
    app.close()


def statuses(db, event_id: int) -> dict[int, str]:
    db.expire_all()
    rows = db.execute(
        text("SELECT id, status FROM bookings WHERE event_id = :e ORDER BY id"), {"e": event_id}
    ).all()
    return dict(rows)


def undecided(db, event_id: int) -> int:
    db.expire_all()
    return db.execute(
        text("SELECT count(*) FROM bookings WHERE event_id = :e AND status = 'pending'"),
        {"e": event_id},
    ).scalar_one()


def hold_row(conn: Connection, booking: int) -> int:
    """Lock one booking row in ``conn``'s open transaction; returns the backend pid."""
    conn.execute(text("SELECT 1 FROM bookings WHERE id = :b FOR UPDATE"), {"b": booking})
    return conn.execute(text("SELECT pg_backend_pid()")).scalar_one()


def blocked_by(engine: Engine, backend: int) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND :me = ANY (pg_blocking_pids(pid))"
                ),
                {"me": backend},
            ).scalar_one()
        )


def test_a_drain_reads_again_for_a_request_whose_task_found_it_busy(
    engine, session_factory, make_user, make_event, db, private_redis, producer
):
    """The lost wake-up: a request commits after the running drain's last read and its task
    leaves because the event is busy. The drain must decide it before it ends."""
    event = make_event(capacity=10)
    first_user, held_user, late_user = (make_user().id for _ in range(3))
    client = redis.Redis.from_url(private_redis.url)
    signal = partial(signal_event, client, producer, event.id, ttl=30)
    insert_pending(db, event.id, [first_user])
    assert signal()  # the first request's signal; its task is the drain below

    hold = engine.connect()
    holding: list[int] = []

    def take() -> bool:
        taken = take_signal(client, event.id)
        if not holding:
            # After the first short batch: a request arrives and the test holds its row, so
            # the drain's next read stops on it, having taken the signal.
            with hold.begin():
                booking = hold.execute(
                    text(
                        "INSERT INTO bookings (booking_id, user_id, event_id, quantity)"
                        " VALUES ('bk_held', :u, :e, 1) RETURNING id"
                    ),
                    {"u": held_user, "e": event.id},
                ).scalar_one()
            hold.begin()
            holding.append(hold_row(hold, booking))
        return taken

    def drain(take_signal, worker: str) -> Drained:
        return drain_event(
            session_factory,
            event.id,
            batch_size=10,
            worker=worker,
            publish=lambda batch: None,
            take_signal=take_signal,
            resignal=signal,
        )

    try:
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(drain, take, "running")
            wait_until(lambda: holding and blocked_by(engine, holding[0]), SETTLE, "drain held")
            # A request committed after the running drain's last read, signalled as intake
            # does: the signal was taken, so a task is queued; it finds the event busy.
            insert_pending(db, event.id, [late_user])
            assert signal()
            second = drain(lambda: take_signal(client, event.id), "second")
            assert second == Drained([], busy=True)
            hold.rollback()
            first = running.result(timeout=SETTLE)
    finally:
        hold.close()

    assert not first.busy
    assert [d.user_id for d in first.decisions] == [first_user, held_user, late_user]
    assert set(statuses(db, event.id).values()) == {"confirmed"}
    assert_one_decision_per_booking(db, event.id)
    client.close()


def test_the_decider_updates_only_rows_still_pending(
    engine, session_factory, make_user, make_event, db
):
    """A booking decided by something that took neither of the decider's locks, between the
    decider's read and its update: the batch is rolled back (and retried), not written over."""
    event = make_event(capacity=10)
    insert_pending(db, event.id, [make_user().id for _ in range(3)])
    bookings = list(statuses(db, event.id))

    def decide() -> list:
        with session_scope(session_factory) as session:
            return procedures.process_event_queue(session, event.id, 10, "decider")

    with engine.connect() as other, ThreadPoolExecutor(1) as pool:
        other.begin()
        backend = hold_row(other, bookings[0])
        batch = pool.submit(decide)
        wait_until(lambda: blocked_by(engine, backend), SETTLE, "decider at its update")
        other.execute(
            text(
                "UPDATE bookings SET status = 'rejected', reason = 'sold_out', decided_at = now()"
                " WHERE id = :b"
            ),
            {"b": bookings[0]},
        )
        other.commit()
        with pytest.raises(OperationalError, match="serialization|decided under the decider"):
            batch.result(timeout=SETTLE)

    assert statuses(db, event.id) == {
        bookings[0]: "rejected",
        bookings[1]: "pending",
        bookings[2]: "pending",
    }
    seats = db.execute(
        text("SELECT available_seats, version FROM events WHERE id = :e"), {"e": event.id}
    )
    assert tuple(seats.one()) == (10, event.version)
    logs = db.execute(
        text("SELECT count(*) FROM booking_logs WHERE event_id = :e"), {"e": event.id}
    )
    assert logs.scalar_one() == 0
    # The retry decides the rest and leaves the other decision as it was.
    assert [d.status for d in decide()] == ["confirmed", "confirmed"]
    assert statuses(db, event.id)[bookings[0]] == "rejected"
    assert_invariant(db)


def test_the_sweeper_passes_over_events_being_drained(engine, make_user, make_event, db):
    drained, forgotten = make_event(), make_event()
    for event in (drained, forgotten):
        insert_pending(db, event.id, [make_user().id])
    db.execute(text("UPDATE bookings SET created_at = now() - interval '1 hour'"))
    db.commit()
    with engine.connect() as drain, drain.begin():
        drain.execute(
            text("SELECT pg_advisory_xact_lock(:c, :e)"),
            {"c": procedures.DRAIN_LOCK_CLASS, "e": drained.id},
        )
        assert pending_event_ids(db, 3) == [forgotten.id]
    db.rollback()
    assert pending_event_ids(db, 3) == [drained.id, forgotten.id]


@pytest.mark.slow
def test_a_quiet_event_is_decided_while_a_hot_backlog_drains(
    engine, make_user, make_event, db, private_redis, private_broker, producer
):
    """Every request of a hot sale queues a task for its event; with the worker's two slots,
    the quiet event's booking is decided before the hot backlog is, not after it."""
    hot, quiet = make_event(capacity=50_000), make_event(capacity=10)
    users = [make_user().id for _ in range(100)]
    insert_pending(db, hot.id, users * 200)  # 20,000 requests, 400 batches of 50
    worker = WorkerProcess(
        "drain-hot",
        concurrency=2,
        **private_broker,
        REDIS_URL=private_redis.url,
        BATCH_SIZE="50",
    ).start()
    try:
        client = redis.Redis.from_url(private_redis.url)
        assert signal_event(client, producer, hot.id, ttl=30)
        wait_until(lambda: undecided(db, hot.id) < 20_000, SETTLE, "the hot drain under way")
        # What a sale's requests sent before the signal was deduplicated (and redeliveries):
        # a task each, all for the hot event, queued ahead of the quiet one.
        for _ in range(20):
            producer.send_task(PROCESS_EVENT, args=[hot.id], queue=BOOKINGS_QUEUE)
        insert_pending(db, quiet.id, [users[0]])
        assert signal_event(client, producer, quiet.id, ttl=30)
        wait_until(lambda: undecided(db, quiet.id) == 0, SETTLE, "the quiet event decided")
        wait_until(lambda: undecided(db, hot.id) == 0, SETTLE, "the hot backlog drained")
    finally:
        worker.stop()
    quiet_decided, hot_last = db.execute(
        text(
            "SELECT max(decided_at) FILTER (WHERE event_id = :q),"
            " max(decided_at) FILTER (WHERE event_id = :h) FROM bookings"
        ),
        {"q": quiet.id, "h": hot.id},
    ).one()
    assert quiet_decided < hot_last
    assert_one_decision_per_booking(db, hot.id)
    assert_invariant(db)
    client.close()
