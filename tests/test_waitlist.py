"""The waiting room's decider (process_event_queue and its steps, promote_waitlist):
waitlisting, promotion in arrival order with the head waiting, leaving, the start of the event,
the per-user limit, a capacity raise through the API, and the line cursor that every place in
line is computed from (common/bookings/line.py). The procedures run here against the real
database, as the worker calls them; the kill -9 case is in tests/test_faults.py."""

from __future__ import annotations

import json
import random

import pytest
from sqlalchemy import text

from common.bookings import procedures
from common.bookings.line import queue_position
from common.bookings.messages import seat_message, status_message
from common.bookings.models import Booking
from common.bookings.service import new_booking_id
from common.bookings.sweeper import pending_event_ids
from common.channels import decisions_channel, event_channel
from tests.test_platform import run_cli


@pytest.fixture
def waitlist_event(db, make_event):
    """An event with its waitlist on (the API's field is the intake branch's: set it here)."""

    def make(**options):
        event = make_event(**options)
        db.execute(
            text("UPDATE events SET waitlist_enabled = true WHERE id = :id"), {"id": event.id}
        )
        db.commit()
        return event

    return make


def ask(db, user, event, quantity=1) -> str:
    """A request as intake stores it: pending, numbered by the trigger."""
    booking_id = new_booking_id()
    db.add(Booking(booking_id=booking_id, user_id=user.id, event_id=event.id, quantity=quantity))
    db.commit()
    return booking_id


def leave(db, booking_id: str) -> None:
    db.execute(
        text("UPDATE bookings SET cancel_requested_at = now() WHERE booking_id = :b"),
        {"b": booking_id},
    )
    db.commit()


def drain(db, event, limit=100):
    decisions = procedures.process_event_queue(db, event.id, limit, "test")
    db.commit()
    return {d.booking_id: d for d in decisions}


def event_row(db, event):
    return db.execute(
        text(
            "SELECT available_seats, version, line_through, line_gone, waitlist_length"
            " FROM events WHERE id = :id"
        ),
        {"id": event.id},
    ).one()


def statuses(db, event) -> dict[str, str]:
    rows = db.execute(
        text("SELECT booking_id, status FROM bookings WHERE event_id = :id"), {"id": event.id}
    )
    return {row.booking_id: row.status for row in rows}


def actions(db, booking_id: str) -> list[str]:
    rows = db.execute(
        text("SELECT action FROM booking_logs WHERE booking_id = :b ORDER BY id"), {"b": booking_id}
    )
    return list(rows.scalars())


def assert_line_consistent(db) -> None:
    """Every place in line computed from the cursor is the row's place among the event's
    pending and waitlisted requests; nothing for `ebs check` to complain about."""
    rows = db.execute(
        text(
            """
            SELECT b.queue_seq, e.line_through, e.line_gone,
                   row_number() OVER (PARTITION BY b.event_id ORDER BY b.queue_seq) AS place
            FROM bookings b JOIN events e ON e.id = b.event_id
            WHERE b.status IN ('pending', 'waitlisted')
            """
        )
    ).all()
    for seq, through, gone, place in rows:
        assert queue_position(seq, through, gone) == place, (seq, through, gone)
    assert db.execute(text("SELECT * FROM waitlist_violations()")).all() == []
    assert db.execute(text("SELECT * FROM seat_invariant_violations()")).all() == []


def test_waitlisted_then_promoted_in_arrival_order_the_head_waiting(db, make_user, waitlist_event):
    event = waitlist_event(capacity=4, max_per_user=4)
    a, b, c, d, e = (make_user() for _ in range(5))
    first = ask(db, a, event, 2)
    second = ask(db, b, event, 2)
    big = ask(db, c, event, 3)
    small = ask(db, d, event, 1)
    decided = drain(db, event)
    assert [decided[x].status for x in (first, second, big, small)] == [
        "confirmed", "confirmed", "waitlisted", "waitlisted",
    ]  # fmt: skip
    assert (decided[big].queue_position, decided[small].queue_position) == (1, 2)
    assert decided[big].decided_at is None and decided[big].reason is None
    last = decided[small]
    assert (last.line_waiting, last.waitlist_length, last.available_seats) == (2, 2, 0)
    assert actions(db, big) == ["waitlisted"]
    log = db.execute(
        text("SELECT details FROM booking_logs WHERE booking_id = :b"), {"b": small}
    ).scalar_one()
    assert log["queue_position"] == 2
    assert_line_consistent(db)

    # Two seats come back: the head wants three, so it waits and nobody passes it, not even
    # a newcomer who wants one seat.
    leave(db, first)
    decided = drain(db, event)
    assert decided[first].status == "cancelled"
    newcomer = ask(db, e, event, 1)
    decided = drain(db, event)
    assert decided[newcomer].status == "waitlisted"
    assert decided[newcomer].queue_position == 3
    assert statuses(db, event)[big] == statuses(db, event)[small] == "waitlisted"
    assert event_row(db, event).available_seats == 2
    assert_line_consistent(db)

    # Two more: the head fits, then the one behind it; the newcomer waits for a seat.
    leave(db, second)
    decided = drain(db, event)
    assert [(x, decided[x].status, decided[x].promoted) for x in decided] == [
        (second, "cancelled", False), (big, "confirmed", True), (small, "confirmed", True),
    ]  # fmt: skip
    assert decided[small].seats_left == 0
    row = event_row(db, event)
    assert (row.available_seats, row.waitlist_length) == (0, 1)
    assert decided[small].line_waiting == 1
    assert actions(db, big) == ["waitlisted", "promoted"]
    assert_line_consistent(db)
    kind, data = seat_message(list(decided.values()))  # type: ignore[misc]
    assert kind == "seat_update"
    assert (data["confirmed"], data["promoted"], data["cancelled"], data["waitlisted"]) == (
        2, 2, 1, 0,
    )  # fmt: skip
    assert data["line"] == {
        "through": row.line_through, "gone": row.line_gone, "waiting": 1, "waitlisted": 1,
    }  # fmt: skip
    message = status_message(decided[big])
    assert (message["status"], message["promoted"], message["queuePosition"]) == (
        "confirmed", True, None,
    )  # fmt: skip


def test_the_per_user_limit_counts_waitlisted_seats(db, make_user, waitlist_event):
    event = waitlist_event(capacity=2, max_per_user=3)
    user = make_user()
    # In one batch: the second request is waitlisted, the third would pass the limit with
    # the seats held and waited for.
    held, waits, over = ask(db, user, event, 2), ask(db, user, event, 1), ask(db, user, event, 1)
    decided = drain(db, event)
    assert [(decided[x].status, decided[x].reason) for x in (held, waits, over)] == [
        ("confirmed", None), ("waitlisted", None), ("rejected", "limit_exceeded"),
    ]  # fmt: skip
    # In a later batch, from the rows.
    later = ask(db, user, event, 1)
    assert drain(db, event)[later].reason == "limit_exceeded"
    assert_line_consistent(db)


def test_leaving_the_waitlist_moves_the_line_not_the_seats(db, make_user, waitlist_event):
    event = waitlist_event(capacity=1)
    users = [make_user() for _ in range(4)]
    asked = [ask(db, user, event) for user in users]
    drain(db, event)
    before = event_row(db, event)
    leave(db, asked[1])
    decided = drain(db, event)
    assert list(decided) == [asked[1]]
    assert decided[asked[1]].status == "cancelled"
    kind, data = seat_message(list(decided.values()))  # type: ignore[misc]
    assert kind == "booking_cancelled"
    after = event_row(db, event)
    assert (after.available_seats, after.version) == (before.available_seats, before.version)
    assert (before.waitlist_length, after.waitlist_length) == (3, 2)
    assert data["line"]["waiting"] == 2
    assert_line_consistent(db)
    # The head leaves: the cursor moves past it and the one it was holding back.
    leave(db, asked[2])
    drain(db, event)
    assert event_row(db, event).line_through == 3
    assert_line_consistent(db)


def test_a_batch_of_waitlistings_alone_publishes_a_line_update(db, make_user, waitlist_event):
    event = waitlist_event(capacity=1)
    ask(db, make_user(), event)
    drain(db, event)
    version = event_row(db, event).version
    ask(db, make_user(), event)
    decided = drain(db, event)
    kind, data = seat_message(list(decided.values()))  # type: ignore[misc]
    assert kind == "line_update"
    assert (data["waitlisted"], data["rejected"], data["version"]) == (1, 0, version)
    assert data["line"] == {"through": 1, "gone": [], "waiting": 1, "waitlisted": 1}
    assert event_row(db, event).version == version


def test_the_start_of_the_event_rejects_the_waitlist(db, make_user, waitlist_event):
    event = waitlist_event(capacity=1)
    asked = [ask(db, make_user(), event) for _ in range(3)]
    drain(db, event)
    db.execute(
        text("UPDATE events SET event_date = now() - interval '1 minute' WHERE id = :id"),
        {"id": event.id},
    )
    db.commit()
    # Nothing is pending: the sweeper signals the event because its waitlist is left.
    assert event.id in pending_event_ids(db, 3600)
    decided = drain(db, event, limit=1)  # within the batch size, in arrival order
    assert [(b, d.status, d.reason) for b, d in decided.items()] == [
        (asked[1], "rejected", "event_past")
    ]
    drain(db, event)
    assert statuses(db, event) == {
        asked[0]: "confirmed", asked[1]: "rejected", asked[2]: "rejected",
    }  # fmt: skip
    row = event_row(db, event)
    assert (row.waitlist_length, row.line_through, row.line_gone) == (0, 3, [])
    assert event.id not in pending_event_ids(db, 3600)
    assert_line_consistent(db)


def test_a_capacity_raise_promotes_through_the_api(
    db, client, redis_client, make_user, waitlist_event, auth
):
    admin = make_user(role="admin")
    event = waitlist_event(capacity=2, max_per_user=5)
    users = [make_user() for _ in range(4)]
    sizes = (2, 2, 1, 1)
    asked = [ask(db, user, event, n) for user, n in zip(users, sizes, strict=True)]
    drain(db, event)
    listener = redis_client.pubsub()
    listener.subscribe(decisions_channel(), event_channel(event.id))
    listener.get_message(timeout=1)
    listener.get_message(timeout=1)

    # Three more seats: the head (2) and the one behind it (1); the last waits for one more.
    response = client.put(f"/api/events/{event.id}", json={"seatCapacity": 5}, headers=auth(admin))
    assert response.status_code == 200, response.text
    assert response.json()["data"]["availableSeats"] == 0
    assert statuses(db, event) == {
        asked[0]: "confirmed", asked[1]: "confirmed", asked[2]: "confirmed", asked[3]: "waitlisted",
    }  # fmt: skip
    assert actions(db, asked[1]) == ["waitlisted", "promoted"]
    assert event_row(db, event).waitlist_length == 1
    assert_line_consistent(db)

    published = {}
    while (message := listener.get_message(timeout=2)) is not None:
        if message["type"] == "message":
            body = json.loads(message["data"])
            published[body["type"]] = body["data"]
    listener.close()
    promoted = {s["bookingId"]: s for s in published["booking_statuses"]["decisions"]}
    assert set(promoted) == {asked[1], asked[2]}
    assert promoted[asked[1]]["status"] == "confirmed" and promoted[asked[1]]["promoted"]
    assert published["booking_created"]["promoted"] == 2
    assert published["booking_created"]["line"]["waitlisted"] == 1

    # A raise that fits nobody promotes nobody.
    response = client.put(f"/api/events/{event.id}", json={"seatCapacity": 5}, headers=auth(admin))
    assert response.status_code == 200
    assert statuses(db, event)[asked[3]] == "waitlisted"


LIVE = text(
    "SELECT booking_id FROM bookings WHERE event_id = :id AND cancel_requested_at IS NULL"
    " AND status IN ('pending', 'waitlisted', 'confirmed')"
)


def test_positions_stay_true_through_random_operations(db, make_user, waitlist_event):
    rng = random.Random(12)
    events = [waitlist_event(capacity=rng.randint(3, 8), max_per_user=4) for _ in range(2)]
    users = [make_user() for _ in range(6)]
    for _ in range(60):
        event = rng.choice(events)
        move = rng.random()
        if move < 0.5:
            ask(db, rng.choice(users), event, rng.randint(1, 3))
        elif move < 0.7:
            live = db.scalars(LIVE, {"id": event.id}).all()
            if live:
                leave(db, rng.choice(sorted(live)))
        elif move < 0.8:
            db.execute(
                text(
                    "UPDATE events SET seat_capacity = seat_capacity + 2,"
                    " available_seats = available_seats + 2 WHERE id = :id"
                ),
                {"id": event.id},
            )
            procedures.promote_waitlist(db, event.id, "test")
            db.commit()
        else:
            drain(db, event, limit=rng.randint(1, 4))
        assert_line_consistent(db)
    for event in events:
        drain(db, event)
    assert_line_consistent(db)
    waiting = db.scalar(text("SELECT count(*) FROM bookings WHERE status = 'waitlisted'"))
    assert waiting, "the draw never waitlisted anybody: the test proves nothing"


def test_ebs_check_fails_on_a_stuck_waitlist(engine, db, make_user, waitlist_event):
    event = waitlist_event(capacity=1)
    ask(db, make_user(), event)
    ask(db, make_user(), event)
    drain(db, event)
    assert run_cli("check").returncode == 0
    # Seats freed behind the procedures' back, with nobody promoted.
    db.execute(
        text("UPDATE events SET seat_capacity = 2, available_seats = 1 WHERE id = :id"),
        {"id": event.id},
    )
    db.commit()
    broken = run_cli("check")
    assert broken.returncode == 1
    assert "stuck_waitlist" in broken.stderr
    # A cursor that lies is caught too.
    db.execute(
        text(
            "UPDATE events SET seat_capacity = 1, available_seats = 0, line_through = 0"
            " WHERE id = :id"
        ),
        {"id": event.id},
    )
    db.commit()
    broken = run_cli("check")
    assert broken.returncode == 1
    assert "line_cursor" in broken.stderr and "stuck_waitlist" not in broken.stderr


def test_the_cursor_waits_for_a_request_whose_cancellation_came_mid_batch(
    db, make_user, waitlist_event
):
    """A cancellation asked for after the batch read its cancellations leaves that request
    pending behind the batch's decisions: line_after must still see it at the head, though the
    batch vouches only for the numbers up to its last decision (p_after)."""
    event = waitlist_event(capacity=5)
    user = make_user()
    first, *later = (ask(db, user, event) for _ in range(3))
    leave(db, first)
    db.execute(
        text(
            "UPDATE bookings SET status = 'rejected', reason = 'sold_out', decided_at = now()"
            " WHERE booking_id = ANY(:later)"
        ),
        {"later": later},
    )
    row = db.execute(
        text("SELECT * FROM line_after(:id, '{}', '{2,3}', 3)"), {"id": event.id}
    ).one()
    db.rollback()
    assert (row.line_through, row.line_gone, row.line_waiting) == (0, [2, 3], 1)


def test_a_capacity_lowered_below_a_waitlisted_request_rejects_it(
    db, client, redis_client, make_user, waitlist_event, auth
):
    """A head that can never fit the event leaves the line (issue 18): A holds 2 of 10 seats,
    B waits for 9, C for 1; the capacity goes down to 5. B is rejected 'capacity_lowered' and
    told, in the edit's transaction; C, behind it, gets a free seat at once."""
    admin = make_user(role="admin")
    event = waitlist_event(capacity=10, max_per_user=10)
    a, b, c = (make_user() for _ in range(3))
    holder, big, small = ask(db, a, event, 2), ask(db, b, event, 9), ask(db, c, event, 1)
    drain(db, event)
    assert statuses(db, event) == {holder: "confirmed", big: "waitlisted", small: "waitlisted"}
    listener = redis_client.pubsub()
    listener.subscribe(decisions_channel())
    listener.get_message(timeout=1)

    response = client.put(f"/api/events/{event.id}", json={"seatCapacity": 5}, headers=auth(admin))
    assert response.status_code == 200, response.text
    assert statuses(db, event) == {holder: "confirmed", big: "rejected", small: "confirmed"}
    rejected = client.get(f"/api/bookings/{big}", headers=auth(b)).json()["data"]
    assert (rejected["status"], rejected["reason"]) == ("rejected", "capacity_lowered")
    assert actions(db, big) == ["waitlisted", "rejected"]
    assert response.json()["data"]["availableSeats"] == 2
    assert_line_consistent(db)
    told = {}
    while (message := listener.get_message(timeout=2)) is not None:
        if message["type"] == "message":
            for status in json.loads(message["data"])["data"]["decisions"]:
                told[status["bookingId"]] = (status["status"], status.get("reason"))
    listener.close()
    assert told == {big: ("rejected", "capacity_lowered"), small: ("confirmed", None)}

    # A cancels: the seats go to nobody stuck; newcomers are served.
    leave(db, holder)
    drain(db, event)
    newcomer = ask(db, make_user(), event, 3)
    assert drain(db, event)[newcomer].status == "confirmed"
    assert_line_consistent(db)


def test_ebs_check_fails_on_a_waitlisted_request_the_event_cannot_hold(
    engine, db, make_user, waitlist_event
):
    event = waitlist_event(capacity=10)
    ask(db, make_user(), event, 2)
    ask(db, make_user(), event, 9)
    drain(db, event)
    assert run_cli("check").returncode == 0
    # Capacity lowered behind the procedures' back: the head can never be met.
    db.execute(
        text("UPDATE events SET seat_capacity = 5, available_seats = 3 WHERE id = :id"),
        {"id": event.id},
    )
    db.commit()
    problems = db.execute(text("SELECT event_id, problem FROM waitlist_violations()")).all()
    assert problems == [(event.id, "oversized_waitlist")]
    broken = run_cli("check")
    assert broken.returncode == 1
    assert "oversized_waitlist" in broken.stderr
