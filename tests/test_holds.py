"""Holds that expire (issue 21): a request accepted on an event with ``holdSeconds`` is held,
its seats taken, until the buyer (or a payment) confirms it or the decider expires it, giving
the seats back and promoting the waitlist in the same transaction. The procedures run against
the real database as the worker calls them; the API through its app; the timers, the sweeper
and the races against real workers."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from common.bookings import procedures
from common.bookings.messages import seat_message, status_message
from common.bookings.sweeper import pending_event_ids
from tests.test_platform import run_cli
from tests.test_waitlist import ask, drain, leave


def lapse(db, *booking_ids: str, ago: float = 1.0) -> None:
    """Move the holds' end into the past, as time would."""
    db.execute(
        text(
            "UPDATE bookings SET expires_at = now() - make_interval(secs => :ago)"
            " WHERE booking_id = ANY(:ids)"
        ),
        {"ago": ago, "ids": list(booking_ids)},
    )
    db.commit()


def row(db, booking_id: str):
    return db.execute(
        text("SELECT status, expires_at, decided_at FROM bookings WHERE booking_id = :b"),
        {"b": booking_id},
    ).one()


def seats(db, event) -> int:
    return db.execute(
        text("SELECT available_seats FROM events WHERE id = :id"), {"id": event.id}
    ).scalar_one()


def actions(db, booking_id: str) -> list[str]:
    return list(
        db.execute(
            text("SELECT action FROM booking_logs WHERE booking_id = :b ORDER BY id"),
            {"b": booking_id},
        ).scalars()
    )


def test_an_accepted_request_is_held_with_its_end_and_its_seats_taken(db, make_user, hold_event):
    event = hold_event(seconds=120, capacity=5)
    user = make_user()
    booking_id = ask(db, user, event, quantity=2)
    decided = drain(db, event)[booking_id]
    assert decided.status == "held"
    assert decided.expires_at is not None
    assert (
        timedelta(seconds=119) < decided.expires_at - decided.decided_at <= timedelta(seconds=120)
    )
    status, expires_at, _ = row(db, booking_id)
    assert (status, expires_at) == ("held", decided.expires_at)
    assert seats(db, event) == 3
    assert actions(db, booking_id) == ["held"]
    assert procedures.seat_invariant_violations(db) == []
    message = status_message(decided)
    assert message["status"] == "held" and message["expiresAt"] == decided.expires_at.isoformat()
    kind, data = seat_message([decided]) or ("", {})
    assert (kind, data["held"], data["availableSeats"]) == ("booking_created", 1, 3)


def test_without_hold_seconds_a_request_is_confirmed_as_before(db, make_user, make_event):
    event = make_event(capacity=5)
    booking_id = ask(db, make_user(), event)
    decided = drain(db, event)[booking_id]
    assert (decided.status, decided.expires_at) == ("confirmed", None)


def test_held_seats_count_toward_the_per_user_limit(db, make_user, hold_event):
    event = hold_event(capacity=10, max_per_user=3)
    user = make_user()
    first = ask(db, user, event, quantity=2)
    drain(db, event)
    second = ask(db, user, event, quantity=2)
    decided = drain(db, event)
    assert row(db, first).status == "held"
    assert (decided[second].status, decided[second].reason) == ("rejected", "limit_exceeded")


def test_an_expired_hold_gives_its_seats_back_and_promotes_the_waitlist(db, make_user, hold_event):
    event = hold_event(capacity=2, waitlist=True)
    buyer, waiting = make_user(), make_user()
    held = ask(db, buyer, event, quantity=2)
    drain(db, event)
    queued = ask(db, waiting, event, quantity=1)
    assert drain(db, event)[queued].status == "waitlisted"
    lapse(db, held)
    batch = drain(db, event)
    assert batch[held].status == "expired"
    # The seats go back and the head of the waitlist is held, in the same transaction.
    assert batch[queued].status == "held" and batch[queued].promoted
    assert list(batch) == [held, queued]
    assert seats(db, event) == 1
    assert actions(db, held) == ["held", "expired"]
    assert actions(db, queued) == ["waitlisted", "promoted"]
    assert procedures.seat_invariant_violations(db) == []
    assert procedures.waitlist_violations(db) == []
    kind, data = seat_message(list(batch.values())) or ("", {})
    assert (kind, data["expired"], data["held"]) == ("seat_update", 1, 1)


def test_a_hold_not_yet_due_is_left_alone(db, make_user, hold_event):
    event = hold_event(capacity=2)
    held = ask(db, make_user(), event)
    drain(db, event)
    assert drain(db, event) == {}
    assert row(db, held).status == "held"


def test_a_cancelled_hold_is_released_at_once(db, make_user, hold_event):
    event = hold_event(capacity=2)
    held = ask(db, make_user(), event, quantity=2)
    drain(db, event)
    leave(db, held)
    batch = drain(db, event)
    assert batch[held].status == "cancelled"
    assert seats(db, event) == 2
    # Due and cancelled both: it ends once, as the cancellation (the step that runs first).
    other = ask(db, make_user(), event, quantity=2)
    drain(db, event)
    leave(db, other)
    lapse(db, other)
    assert [d.status for d in drain(db, event).values()] == ["cancelled"]
    assert procedures.seat_invariant_violations(db) == []


def test_the_sweeper_finds_holds_past_their_end(db, make_user, hold_event):
    event = hold_event(capacity=2)
    held = ask(db, make_user(), event)
    drain(db, event)
    assert event.id not in pending_event_ids(db, 5)
    lapse(db, held, ago=10)
    assert event.id in pending_event_ids(db, 5)


def test_ebs_check_finds_a_hold_past_its_time_and_seats_that_do_not_add_up(
    db, make_user, hold_event
):
    event = hold_event(capacity=4)
    held = ask(db, make_user(), event, quantity=2)
    drain(db, event)
    assert run_cli("check").returncode == 0
    lapse(db, held, ago=3600)
    result = run_cli("check")
    assert result.returncode == 1
    assert "hold_past_expiry" in result.stderr and held in result.stderr
    drain(db, event)  # the decider expires it
    assert run_cli("check").returncode == 0
    # A held seat counted nowhere breaks available + confirmed + held = capacity.
    db.execute(text("UPDATE events SET available_seats = 4 WHERE id = :id"), {"id": event.id})
    other = ask(db, make_user(), event, quantity=1)
    drain(db, event)
    db.execute(text("UPDATE events SET available_seats = 4 WHERE id = :id"), {"id": event.id})
    db.commit()
    result = run_cli("check")
    assert result.returncode == 1 and '"held_seats": 1' in result.stderr, (other, result.stderr)


# ---------------------------------------------------------------- the API


@pytest.fixture
def client(engine, settings):
    """The API with a broker of its own that no worker consumes: these tests drain by hand, and
    the session's worker (started by an earlier test file) would otherwise decide, or expire,
    the same bookings at the same time."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from devstack import RedisServer

    broker = RedisServer().start()
    try:
        quiet = settings.model_copy(update={"CELERY_BROKER_URL": broker.url})
        with TestClient(create_app(quiet)) as test_client:
            yield test_client
    finally:
        broker.close()


def make_held(client, db, auth, user, event, quantity=1) -> str:
    answer = client.post(
        "/api/bookings", json={"eventId": event.id, "quantity": quantity}, headers=auth(user)
    )
    assert answer.status_code == 202, answer.text
    booking_id = answer.json()["data"]["bookingId"]
    drain(db, event)
    return booking_id


def test_the_buyer_confirms_a_hold_and_confirming_twice_is_harmless(
    client, db, auth, make_user, hold_event
):
    event = hold_event(capacity=3)
    user = make_user()
    booking_id = make_held(client, db, auth, user, event, quantity=2)
    read = client.get(f"/api/bookings/{booking_id}", headers=auth(user)).json()["data"]
    assert read["status"] == "held" and read["expiresAt"]
    first = client.post(f"/api/bookings/{booking_id}/confirm", headers=auth(user))
    assert first.status_code == 200, first.text
    assert first.json()["data"]["status"] == "confirmed"
    second = client.post(f"/api/bookings/{booking_id}/confirm", headers=auth(user))
    assert (second.status_code, second.json()["data"]["status"]) == (200, "confirmed")
    assert actions(db, booking_id) == ["held", "paid"]
    assert seats(db, event) == 1
    assert procedures.seat_invariant_violations(db) == []


def test_confirming_after_the_end_is_hold_expired_and_changes_nothing(
    client, db, auth, make_user, hold_event
):
    event = hold_event(capacity=3)
    user = make_user()
    booking_id = make_held(client, db, auth, user, event)
    lapse(db, booking_id)
    before = row(db, booking_id)
    late = client.post(f"/api/bookings/{booking_id}/confirm", headers=auth(user))
    assert late.status_code == 409 and late.json()["error"]["code"] == "HOLD_EXPIRED"
    assert row(db, booking_id) == before and actions(db, booking_id) == ["held"]
    drain(db, event)
    expired = client.post(f"/api/bookings/{booking_id}/confirm", headers=auth(user))
    assert expired.status_code == 409 and expired.json()["error"]["code"] == "HOLD_EXPIRED"
    cancel = client.delete(f"/api/bookings/{booking_id}", headers=auth(user))
    assert cancel.status_code == 409 and cancel.json()["error"]["code"] == "HOLD_EXPIRED"
    assert seats(db, event) == 3


def test_only_a_hold_can_be_confirmed(client, db, auth, make_user, hold_event, make_event):
    event = hold_event(capacity=3)
    user, stranger = make_user(), make_user()
    answer = client.post("/api/bookings", json={"eventId": event.id}, headers=auth(user))
    pending = answer.json()["data"]["bookingId"]
    refused = client.post(f"/api/bookings/{pending}/confirm", headers=auth(user))
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "NOT_HELD"
    drain(db, event)
    other = client.post(f"/api/bookings/{pending}/confirm", headers=auth(stranger))
    assert other.status_code == 404
    client.delete(f"/api/bookings/{pending}", headers=auth(user))
    asked = client.post(f"/api/bookings/{pending}/confirm", headers=auth(user))
    assert asked.status_code == 409 and asked.json()["error"]["code"] == "ALREADY_CANCELLED"
    drain(db, event)
    assert row(db, pending).status == "cancelled" and seats(db, event) == 3


def test_hold_seconds_is_part_of_an_event(client, auth, make_user):
    admin = make_user(role="admin")
    start = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    body = {"name": "Gig", "eventDate": start, "seatCapacity": 10, "holdSeconds": 900}
    created = client.post("/api/events", json=body, headers=auth(admin))
    assert created.status_code == 201, created.text
    assert created.json()["data"]["holdSeconds"] == 900
    event_id = created.json()["data"]["id"]
    off = client.put(f"/api/events/{event_id}", json={"holdSeconds": None}, headers=auth(admin))
    assert off.json()["data"]["holdSeconds"] is None
    bad = client.post("/api/events", json={**body, "holdSeconds": 0}, headers=auth(admin))
    assert bad.status_code == 400


def test_the_webhook_types_cover_holds():
    from common.webhooks.messages import EVENT_TYPES, payload

    assert {"booking.held", "booking.paid", "booking.expired"} <= set(EVENT_TYPES)
    body = payload(
        log_id=1, booking_id="bk_1", action="promoted", user_id=1, event_id=1,
        details={"expires_at": "2030-01-01T00:00:00+00:00"}, timestamp=datetime.now(UTC),
    )  # fmt: skip
    assert json.loads(body)["data"]["status"] == "held"


def test_the_broker_keeps_its_visibility_timeout_and_timers_wait_less_than_it():
    """A hold's expiry timer waits unacknowledged in a worker until its time; past the Redis
    broker's visibility timeout it would be delivered again. Timers are sent only within
    HOLD_TIMER_HORIZON of their time, so the timeout keeps its default (an hour) and a dead
    worker's other tasks (drains, webhook deliveries, warnings) come back within it, not after
    the longest hold (docs/RELIABILITY.md, "Holds")."""
    from kombu.transport.redis import Channel

    import celeryconfig
    from common.bookings.holds import TIMER_SLACK
    from common.settings import Settings

    options = getattr(celeryconfig, "broker_transport_options", {})
    timeout = options.get("visibility_timeout", Channel.visibility_timeout)
    assert timeout <= Channel.visibility_timeout == 3600
    longest = Settings.model_fields["HOLD_TIMER_HORIZON"].metadata
    horizon = next(m.le for m in longest if getattr(m, "le", None) is not None)
    assert horizon + TIMER_SLACK.total_seconds() + celeryconfig.task_time_limit < timeout


class Sent:
    """The tasks a ``set_timers`` call handed to its sender (Celery's ``send_task``)."""

    def __init__(self, fail: bool = False) -> None:
        self.tasks: list[tuple[str, list, object]] = []
        self.fail = fail

    def send_task(self, name, *args, **kwargs):
        if self.fail:
            raise ConnectionError("the broker is away")
        self.tasks.append((name, kwargs["args"], kwargs["eta"]))


def test_a_timer_is_sent_once_within_the_horizon_and_the_sweeper_sends_later_ones(
    db, make_user, hold_event, redis_client
):
    """A hold ending beyond HOLD_TIMER_HORIZON gets no timer when decided; the sweeper finds its
    end once it comes within the horizon and sends its drain and warning, once, whoever asks
    again; a send that failed is tried again by the next sweep."""
    from common.bookings.holds import TIMER_BUCKET, TIMER_SLACK, set_timers, timer_ends
    from common.tasks import PROCESS_EVENT, WARN_HOLDS

    event = hold_event(seconds=900)
    held = ask(db, make_user(), event)
    end = drain(db, event)[held].expires_at
    sent = Sent()
    assert not set_timers(redis_client, sent, event.id, end, horizon=600, warn_before=60)
    assert sent.tasks == [] and timer_ends(db, 600) == []
    assert timer_ends(db, 1000) == [(event.id, end)]

    with pytest.raises(ConnectionError):
        set_timers(redis_client, Sent(fail=True), event.id, end, horizon=1000, warn_before=60)
    for _ in range(2):  # the next sweeps: the first sends, the second finds it sent
        for event_id, at in timer_ends(db, 1000):
            set_timers(redis_client, sent, event_id, at, horizon=1000, warn_before=60)
    assert [(name, args[0]) for name, args, _ in sent.tasks] == [
        (PROCESS_EVENT, event.id),
        (WARN_HOLDS, event.id),
    ]
    # At the end of the end's bucket: one timer for the ends that fall in it.
    bucket = TIMER_BUCKET
    assert end < sent.tasks[0][2] <= end + bucket + TIMER_SLACK
    bucket_end = datetime.fromisoformat(sent.tasks[1][1][1])
    assert end <= bucket_end < end + bucket
    assert sent.tasks[1][2] == bucket_end - timedelta(seconds=60)
    # A confirmed hold needs no timer.
    db.execute(text("UPDATE bookings SET status = 'confirmed' WHERE booking_id = :b"), {"b": held})
    db.commit()
    assert timer_ends(db, 1000) == []


# ---------------------------------------------------------------- racing an expiry


def test_confirms_and_cancels_racing_an_expiry_end_each_hold_exactly_once(
    db, session_factory, make_user, hold_event
):
    """200 holds due now; a confirm or a cancellation for each races the decider's expiry.
    Whatever wins, each hold ends once: confirmed, cancelled or expired, one audit row after
    ``held``, and the seats add up."""
    from common.bookings import holds, reads, service
    from common.errors import DomainError

    event = hold_event(capacity=200, max_per_user=1)
    users = [make_user() for _ in range(200)]
    ids = [ask(db, u, event) for u in users]
    drain(db, event, limit=500)
    # Half are due by the time the race starts, half end a moment into it.
    lapse(db, *ids[::2], ago=0)
    db.execute(
        text(
            "UPDATE bookings SET expires_at = now() + interval '50 milliseconds'"
            " WHERE booking_id = ANY(:ids)"
        ),
        {"ids": ids[1::2]},
    )
    db.commit()
    start = threading.Barrier(201)
    errors: list[BaseException] = []

    def act(i: int) -> None:
        start.wait()
        try:
            with session_factory() as session:
                if i % 3:
                    booking = reads.get_booking(session, users[i], ids[i], for_update=True)
                    holds.confirm_hold(session, booking, by="buyer")
                else:
                    service.request_cancellation(session, users[i], ids[i], lambda e: None)
                session.commit()
        except DomainError:
            pass
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def expire() -> None:
        start.wait()
        for _ in range(40):
            with session_factory() as session:
                try:
                    procedures.process_event_queue(session, event.id, 500, "race")
                    session.commit()
                except Exception:  # a serialization failure, retried as the worker does
                    session.rollback()

    threads = [threading.Thread(target=act, args=(i,)) for i in range(200)]
    threads.append(threading.Thread(target=expire))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    drain(db, event, limit=500)  # whatever the race left: cancellations asked, holds now due
    lapse(db, *[b for b in ids if row(db, b).status == "held"])
    drain(db, event, limit=500)
    logs = db.execute(
        text(
            "SELECT booking_id, array_agg(action ORDER BY id) FROM booking_logs"
            " WHERE event_id = :id GROUP BY booking_id"
        ),
        {"id": event.id},
    ).all()
    ends = {"paid": "confirmed", "cancelled": "cancelled", "expired": "expired"}
    for booking_id, trail in logs:
        assert trail[0] == "held" and len(trail) == 2 and trail[1] in ends, (booking_id, trail)
        assert row(db, booking_id).status == ends[trail[1]]
    assert len(logs) == 200
    confirmed = db.execute(
        text("SELECT count(*) FROM bookings WHERE event_id = :id AND status = 'confirmed'"),
        {"id": event.id},
    ).scalar_one()
    assert seats(db, event) == 200 - confirmed
    assert procedures.seat_invariant_violations(db) == []


def test_a_confirm_that_read_the_hold_before_its_expiry_committed_finds_it_expired(
    db, engine, session_factory, make_user, hold_event
):
    """The interleaving the race above rarely hits, made certain: 20 confirmations begin before
    the holds' end; the decider, after it, expires them and is held (a SHARE lock on
    booking_logs stops its audit insert) with the rows written and not committed; the
    confirmations run into it. Each must then find the hold expired (the booking's row lock
    makes it wait and read again), never overwrite the expiry with a confirmation."""
    from common.bookings import holds, reads
    from common.errors import HoldExpired

    event = hold_event(capacity=20, max_per_user=1)
    users = [make_user() for _ in range(20)]
    ids = [ask(db, u, event) for u in users]
    drain(db, event, limit=100)
    end = (
        db.execute(
            text(
                "UPDATE bookings SET expires_at = now() + interval '1 second'"
                " WHERE booking_id = ANY(:ids) RETURNING expires_at"
            ),
            {"ids": ids},
        )
        .scalars()
        .first()
    )
    db.commit()
    # Each confirmation's transaction begins now, before the end (its now() is its start).
    sessions = [session_factory() for _ in ids]
    confirmers = [s.execute(text("SELECT pg_backend_pid(), now()")).one()[0] for s in sessions]
    while db.execute(text("SELECT now() <= :end"), {"end": end}).scalar_one():
        db.commit()
        threading.Event().wait(0.05)
    db.commit()
    gate = engine.connect()
    gate.execute(text("LOCK TABLE booking_logs IN SHARE MODE"))
    outcomes: dict[str, str] = {}
    decider_pid: list[int] = []

    def expire() -> None:
        with session_factory() as session:
            decider_pid.append(session.execute(text("SELECT pg_backend_pid()")).scalar_one())
            procedures.process_event_queue(session, event.id, 100, "test")
            session.commit()

    def confirm(i: int) -> None:
        session = sessions[i]
        try:
            booking = reads.get_booking(session, users[i], ids[i], for_update=True)
            holds.confirm_hold(session, booking, by="buyer")
            session.commit()
            outcomes[ids[i]] = "confirmed"
        except HoldExpired:
            outcomes[ids[i]] = "HOLD_EXPIRED"
        finally:
            session.close()

    def blocked_by(pid: int, waiting: list[int]) -> int:
        """How many of ``waiting`` wait for ``pid`` (autovacuum may wait for the gate too)."""
        with engine.connect() as probe:
            return probe.execute(
                text(
                    "SELECT count(*) FROM unnest(CAST(:w AS integer[])) w"
                    " WHERE :p = ANY(pg_blocking_pids(w))"
                ),
                {"p": pid, "w": waiting},
            ).scalar_one()

    decider = threading.Thread(target=expire)
    decider.start()
    try:
        me = gate.execute(text("SELECT pg_backend_pid()")).scalar_one()
        # The decider's rows are written; its audit insert waits.
        while not (decider_pid and blocked_by(me, decider_pid)):
            threading.Event().wait(0.02)
        confirms = [threading.Thread(target=confirm, args=(i,)) for i in range(20)]
        for t in confirms:
            t.start()
        while blocked_by(decider_pid[0], confirmers) < 20:  # each confirmation reached its hold
            threading.Event().wait(0.02)
    finally:
        gate.rollback()
        gate.close()
    decider.join()
    for t in confirms:
        t.join()
    assert outcomes == dict.fromkeys(ids, "HOLD_EXPIRED")
    for booking_id in ids:
        assert row(db, booking_id).status == "expired"
        assert actions(db, booking_id) == ["held", "expired"]
    assert seats(db, event) == 20
    assert procedures.seat_invariant_violations(db) == []


def test_a_warning_covers_every_hold_ending_in_its_timers_bucket(db, make_user, hold_event):
    """Ends are gathered into one timer per TIMER_BUCKET: its warning goes to the owner of
    every hold still held that ends in the bucket, and to nobody of the next."""
    from common.bookings.holds import TIMER_BUCKET, warn_holds

    event = hold_event(seconds=900, capacity=3)
    ids = [ask(db, make_user(), event) for _ in range(3)]
    drain(db, event)
    start = datetime(2030, 1, 1, tzinfo=UTC)
    ends = [start + timedelta(milliseconds=10), start + TIMER_BUCKET, start + 2 * TIMER_BUCKET]
    for booking_id, end in zip(ids, ends, strict=True):
        db.execute(
            text("UPDATE bookings SET expires_at = :e WHERE booking_id = :b"),
            {"e": end, "b": booking_id},
        )
    db.commit()
    warned = warn_holds(db, event.id, start + TIMER_BUCKET)
    assert sorted(w["bookingId"] for w in warned) == sorted(ids[:2])
    assert {w["expiresAt"] for w in warned} == {e.isoformat() for e in ends[:2]}
