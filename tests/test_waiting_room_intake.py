"""The waiting room at intake and on every read: the waitlist flag of events, each request's
place in line, the line's bound (503 QUEUE_FULL with a Retry-After from the line's pace), and
the seat snapshot that must never refuse a waitlist event. docs/API.md, "Waiting room".

Rows that stand for a line are written straight into the table here, so no drain is signalled
and the line stays as the test left it; the decisions themselves are the worker's (tested with
a real worker at the end, and in the decider's own tests).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text, update

from api.seats import SeatSnapshots
from common.bookings.intake import IntakeRequest, write_batch
from common.bookings.models import Booking
from common.bookings.schemas import BookingCreate, EventFacts
from common.bookings.service import new_booking_id, request_hash, store_request_alone
from common.channels import event_channel
from common.errors import QueueFull
from common.events.models import Event
from common.pubsub import publish
from devstack import wait_until
from tests.conftest import ApiProcess


def waitlist_on(db, event: Event) -> Event:
    db.execute(update(Event).where(Event.id == event.id).values(waitlist_enabled=True))
    db.commit()
    return event


def in_line(db, user_id: int, event_id: int, *, key: str | None = None) -> Booking:
    """A pending request stored as intake would (the trigger numbers it), with no signal."""
    data = BookingCreate(eventId=event_id, quantity=1)
    booking = Booking(
        booking_id=new_booking_id(),
        user_id=user_id,
        event_id=event_id,
        quantity=1,
        idempotency_key=key,
        request_hash=request_hash(data),
    )
    db.add(booking)
    db.commit()
    return booking


def positions(client: TestClient, headers: dict[str, str], bookings: list[Booking]) -> list:
    answers = [client.get(f"/api/bookings/{b.booking_id}", headers=headers) for b in bookings]
    assert all(a.status_code == 200 for a in answers)
    return [a.json()["data"]["queuePosition"] for a in answers]


# ---------------------------------------------------------------- events


def test_events_carry_the_waitlist_flag_and_length(client, make_user, auth, redis_client):
    admin, user = make_user(role="admin"), make_user()
    body = {
        "name": "Queue Night",
        "eventDate": (datetime.now(UTC) + timedelta(days=3)).isoformat(),
        "seatCapacity": 10,
    }
    plain = client.post("/api/events", json=body, headers=auth(admin)).json()["data"]
    assert plain["waitlistEnabled"] is False and plain["waitlistLength"] == 0
    created = client.post(
        "/api/events", json={**body, "waitlistEnabled": True}, headers=auth(admin)
    )
    assert created.status_code == 201
    event = created.json()["data"]
    assert event["waitlistEnabled"] is True and event["waitlistLength"] == 0
    read = client.get(f"/api/events/{event['id']}").json()["data"]
    assert read["waitlistEnabled"] is True and read["waitlistLength"] == 0

    path = f"/api/events/{event['id']}"
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(event_channel(event["id"]))
    try:
        changed = client.put(path, json={"waitlistEnabled": False}, headers=auth(admin))
        assert changed.status_code == 200 and changed.json()["data"]["waitlistEnabled"] is False
        message = wait_until(lambda: pubsub.get_message(timeout=0.2), 10, "event_updated")
    finally:
        pubsub.close()
    refused_null = client.put(path, json={"waitlistEnabled": None}, headers=auth(admin))
    assert refused_null.status_code == 400
    assert client.put(path, json={"waitlistEnabled": True}, headers=auth(user)).status_code == 403
    update_message = json.loads(message["data"])
    assert update_message["type"] == "event_updated"
    assert update_message["data"]["waitlistEnabled"] is False
    assert update_message["data"]["waitlistLength"] == 0


# ---------------------------------------------------------------- places in line


def test_every_read_carries_the_place_in_line(client, db, make_user, make_event, auth):
    admin, user = make_user(role="admin"), make_user()
    event = make_event(created_by=admin.id)
    line = [in_line(db, user.id, event.id) for _ in range(4)]
    assert [b.queue_seq for b in line] == [1, 2, 3, 4]
    assert positions(client, auth(user), line) == [1, 2, 3, 4]

    # The first is confirmed and the third withdrawn, as the worker would record it: the cursor
    # passes the first, and the third left out of turn.
    db.execute(
        text(
            "UPDATE bookings SET status = CASE queue_seq WHEN 1 THEN 'confirmed'"
            " ELSE 'cancelled' END, decided_at = now(), cancelled_at = CASE queue_seq"
            " WHEN 3 THEN now() END WHERE event_id = :event AND queue_seq IN (1, 3)"
        ),
        {"event": event.id},
    )
    db.execute(
        text("UPDATE events SET line_through = 1, line_gone = '{3}' WHERE id = :event"),
        {"event": event.id},
    )
    db.commit()
    expected = [None, 1, None, 2]
    assert positions(client, auth(user), line) == expected
    by_id = {b.booking_id: p for b, p in zip(line, expected, strict=True)}

    mine = client.get("/api/bookings/user/me", headers=auth(user)).json()["data"]["bookings"]
    assert {b["bookingId"]: b["queuePosition"] for b in mine} == by_id
    assert {b["bookingId"]: b["queueSeq"] for b in mine} == {
        b.booking_id: b.queue_seq for b in line
    }
    url = f"/api/bookings/admin/events/{event.id}"
    listed = client.get(url, headers=auth(admin)).json()["data"]["bookings"]
    assert [b["queuePosition"] for b in listed] == expected
    pending = client.get(url, params={"status": "pending"}, headers=auth(admin))
    assert [b["queuePosition"] for b in pending.json()["data"]["bookings"]] == [1, 2]
    waiting = client.get(url, params={"status": "waitlisted"}, headers=auth(admin))
    assert waiting.status_code == 200 and waiting.json()["data"]["bookings"] == []
    exported = client.get(url, headers={**auth(admin), "Accept": "text/csv"})
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["queue_position"] for r in rows] == ["", "1", "", "2"]
    assert [r["queue_seq"] for r in rows] == ["1", "2", "3", "4"]

    # A withdrawal answers with the place the request still has until the worker cancels it.
    cancelling = client.delete(f"/api/bookings/{line[3].booking_id}", headers=auth(user))
    assert cancelling.status_code == 202
    assert cancelling.json()["data"]["queuePosition"] == 2


def test_the_answer_to_a_request_carries_its_place(client, db, make_user, make_event, auth):
    user = make_user()
    event = make_event()
    ahead = [in_line(db, make_user().id, event.id) for _ in range(2)]
    answer = client.post("/api/bookings", json={"eventId": event.id}, headers=auth(user))
    assert answer.status_code == 202, answer.text
    data = answer.json()["data"]
    assert data["status"] == "pending"
    assert (data["queueSeq"], data["queuePosition"]) == (3, 3)
    assert ahead[0].queue_seq == 1


def test_a_retry_takes_no_number_in_the_line(session_factory, db, make_user, make_event):
    """The trigger numbers every row an insert sees, even one ON CONFLICT then drops: intake
    must not let a stored request's retry reach the insert, or the line gets holes."""
    user = make_user()
    event = make_event()
    data = BookingCreate(eventId=event.id, quantity=1)

    def alone(key: str | None) -> tuple[Booking, bool]:
        with session_factory.begin() as session:
            return store_request_alone(
                session, user.id, data, idempotency_key=key, signal=lambda _: None
            )

    def batched(key: str | None) -> tuple[Booking, bool]:
        request = IntakeRequest(user.id, data, new_booking_id(), key)
        [outcome], _ = write_batch(session_factory, [request], lambda _: None, None)
        assert isinstance(outcome, tuple)
        return outcome

    first, created = alone("k1")
    assert created and first.queue_seq == 1
    for retry in (alone, batched):
        again, created = retry("k1")
        assert not created and again.booking_id == first.booking_id
    assert batched(None)[0].queue_seq == 2
    assert alone(None)[0].queue_seq == 3
    assert (
        db.scalar(text("SELECT arrived FROM event_lines WHERE event_id = :e"), {"e": event.id}) == 3
    )


# ---------------------------------------------------------------- the line's bound


def test_the_line_bound_holds_across_concurrent_batches(session_factory, db, make_user, make_event):
    """Twelve batches at once, each with requests for two events in either order: each line
    takes exactly the bound, numbered 1..bound, the rest are QUEUE_FULL, nothing deadlocks."""
    bound, per_batch, batches = 30, 10, 12
    events = [make_event(capacity=1000).id, make_event(capacity=1000).id]
    users = [make_user().id for _ in range(per_batch)]

    def batch(n: int) -> list:
        order = events if n % 2 else events[::-1]
        requests = [
            IntakeRequest(u, BookingCreate(eventId=order[i % 2], quantity=1), new_booking_id())
            for i, u in enumerate(users)
        ]
        # No pending cap: its per-user locks would make these batches take turns.
        outcomes, _ = write_batch(session_factory, requests, lambda _: None, None, bound)
        return outcomes

    with ThreadPoolExecutor(batches) as pool:
        outcomes = [o for result in pool.map(batch, range(batches)) for o in result]
    stored = [o for o in outcomes if isinstance(o, tuple)]
    refused = [o for o in outcomes if not isinstance(o, tuple)]
    assert len(stored) == 2 * bound
    assert all(isinstance(o, QueueFull) for o in refused), refused[:3]
    for event_id in events:
        seqs = db.scalars(
            text("SELECT queue_seq FROM bookings WHERE event_id = :e ORDER BY queue_seq"),
            {"e": event_id},
        ).all()
        assert seqs == list(range(1, bound + 1))
    full = refused[0]
    assert full.excess >= 1 and "at most 30" in full.details[0]["message"]


@pytest.fixture
def bounded_client(engine, settings):
    from api.app import create_app

    with TestClient(create_app(settings.model_copy(update={"QUEUE_MAX_PER_EVENT": 3}))) as client:
        yield client


def test_a_full_line_is_503_and_says_when_to_come_back(
    bounded_client, db, make_user, make_event, auth, redis_client
):
    client = bounded_client
    holder, user = make_user(), make_user()
    event = make_event()
    kept = in_line(db, holder.id, event.id, key="first-try")
    for _ in range(2):
        in_line(db, make_user().id, event.id)
    body = {"eventId": event.id, "quantity": 1}

    for content_type in ("application/json", "application/json; charset=utf-8"):  # both paths
        full = client.post(
            "/api/bookings", json=body, headers={**auth(user), "Content-Type": content_type}
        )
        assert full.status_code == 503, full.text
        assert full.json()["error"]["code"] == "QUEUE_FULL"
        assert full.headers["Retry-After"] == "5"  # no pace measured yet
    # A retry of a stored request is answered, full line or not.
    retried = client.post(
        "/api/bookings", json=body, headers={**auth(holder), "Idempotency-Key": "first-try"}
    )
    assert retried.status_code == 202
    assert retried.json()["data"]["bookingId"] == kept.booking_id
    assert retried.json()["data"]["queuePosition"] == 1

    # The line's pace, heard from the workers' seat messages on the real Redis: thousands of
    # requests have left the line within moments, so one more fits within a second.
    seats = client.app.state.seats
    for departed in (0, 5000):
        line: dict[str, object] = {"through": departed, "gone": [], "waiting": 3, "waitlisted": 0}
        publish(
            redis_client,
            event_channel(event.id),
            "line_update",
            {"eventId": event.id, "availableSeats": 100, "version": 1, "line": line},
        )
    wait_until(lambda: seats.pace.rate(event.id) is not None, 10, "the line's pace")
    paced = client.post("/api/bookings", json=body, headers=auth(user))
    assert paced.status_code == 503 and paced.headers["Retry-After"] == "1"
    stored = db.scalar(text("SELECT count(*) FROM bookings WHERE event_id = :e"), {"e": event.id})
    assert stored == 3


@pytest.mark.fast
def test_retry_after_follows_the_pace_of_the_line():
    snapshots = SeatSnapshots(factory=None, max_age=60)  # type: ignore[arg-type]
    clock = [1000.0]
    pace = snapshots.pace
    pace.clock = lambda: clock[0]

    def heard(through: int, gone: list[int], at: float) -> None:
        clock[0] = at
        data = {"availableSeats": 0, "version": 1, "line": {"through": through, "gone": gone}}
        snapshots.on_message("event", 7, {"type": "line_update", "data": data})

    assert pace.retry_after(7, 10) == 5  # unknown
    heard(100, [], 1000.0)
    assert pace.retry_after(7, 10) == 5  # one sample is no pace
    heard(110, [113, 115], 1004.0)  # 12 left in 4 s
    heard(105, [], 1004.5)  # an older cursor, arrived late: no news
    clock[0] = 1006.0  # 12 in 6 s up to now: 2 a second
    assert pace.rate(7) == pytest.approx(2.0)
    assert pace.retry_after(7, 13) == 7  # 6.5 s, rounded up
    assert pace.retry_after(7, 1) == 1
    assert pace.retry_after(7, 1000) == 60
    clock[0] = 1040.0  # nothing heard for half a minute: unknown again
    assert pace.retry_after(7, 13) == 5


# ---------------------------------------------------------------- refusals from memory


@pytest.mark.fast
def test_a_waitlist_event_is_never_refused_from_memory():
    snapshots = SeatSnapshots(factory=None, max_age=60)  # type: ignore[arg-type]
    starts = time.time() + 3600
    # No seats left; a waitlist of 3 seats (event 1), none (event 2).
    with_waitlist = EventFacts(
        available=0, version=5, max_per_user=4, starts_at=starts, waitlist_up_to=3
    )
    snapshots.observe(1, with_waitlist, seen=time.monotonic())
    snapshots.observe(2, with_waitlist._replace(waitlist_up_to=0), seen=time.monotonic())
    assert snapshots.seats_left_if_sold_out(1, 2) is None
    assert snapshots.seats_left_if_sold_out(1, 4) == 0  # more than the event holds: never seated
    assert snapshots.seats_left_if_sold_out(2, 2) == 0

    # An admin turns the waitlist on (event_updated), then a seat message keeps it on.
    updated = {
        "availableSeats": 0,
        "version": 6,
        "eventDate": datetime.fromtimestamp(starts, UTC).isoformat(),
        "maxSeatsPerUser": 4,
        "seatCapacity": 3,
        "waitlistEnabled": True,
    }
    snapshots.on_message("event", 2, {"type": "event_updated", "data": updated})
    assert snapshots.seats_left_if_sold_out(2, 2) is None
    seat = {"availableSeats": 0, "version": 7, "line": {"through": 3, "gone": []}}
    snapshots.on_message("event", 2, {"type": "line_update", "data": seat})
    assert snapshots.seats_left_if_sold_out(2, 2) is None
    # Off again: sold out is refused from memory as before.
    snapshots.on_message(
        "event",
        2,
        {"type": "event_updated", "data": {**updated, "version": 8, "waitlistEnabled": False}},
    )
    assert snapshots.seats_left_if_sold_out(2, 2) == 0


def test_the_intake_stores_a_request_a_waitlist_event_cannot_seat(
    session_factory, db, make_user, make_event
):
    user = make_user()
    event = waitlist_on(db, make_event(capacity=4, available=0))
    requests = [
        IntakeRequest(user.id, BookingCreate(eventId=event.id, quantity=q), new_booking_id())
        for q in (2, 5)
    ]
    [stored, too_many], facts = write_batch(session_factory, requests, lambda _: None, None)
    assert isinstance(stored, tuple) and stored[0].queue_position == 1
    assert type(too_many).__name__ == "SoldOut"  # more than the event holds: never seated
    assert facts[event.id][-1] == 4  # the snapshot learns the waitlist from the batch


# ---------------------------------------------------------------- end to end: uvicorn, worker


def burst(url: str, tokens: list[str], event_id: int) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(tokens))
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
            return await asyncio.gather(
                *(
                    http.post(
                        "/api/bookings",
                        json={"eventId": event_id},
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    for token in tokens
                )
            )

    return asyncio.run(run())


def statuses(db, event_id: int) -> list[tuple[str, int, str, int]]:
    """(bookingId, queue_seq, status, user id) of the event's bookings, in queue order."""
    rows = db.execute(
        text(
            "SELECT booking_id, queue_seq, status, user_id FROM bookings WHERE event_id = :e"
            " ORDER BY queue_seq"
        ),
        {"e": event_id},
    ).all()
    return [tuple(row) for row in rows]


def test_200_concurrent_requests_line_up_in_arrival_order(
    api_server, engine, db, make_user, make_event, token_for
):
    """Numbers are 1..200 and no reader ever sees a number before every number below it was
    committed (so the numbers are the commit order); once the worker has decided, the 5 seats
    went to the first 5 and the places the API reports are exactly 1..195 in that order."""
    event = waitlist_on(db, make_event(capacity=5))
    users = [make_user() for _ in range(200)]
    token = {u.id: token_for(u) for u in users}
    seen: list[list[int]] = []
    done = threading.Event()

    def watch() -> None:
        query = text("SELECT queue_seq FROM bookings WHERE event_id = :e ORDER BY queue_seq")
        while not done.is_set():
            with engine.connect() as conn:
                seen.append(list(conn.scalars(query, {"e": event.id})))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        responses = burst(api_server.url, list(token.values()), event.id)
    finally:
        done.set()
        watcher.join()
    assert [r.status_code for r in responses] == [202] * 200, responses[0].text
    answered = sorted(r.json()["data"]["queueSeq"] for r in responses)
    assert answered == list(range(1, 201))
    assert all(seqs == list(range(1, len(seqs) + 1)) for seqs in seen)

    wait_until(
        lambda: all(s != "pending" for _, _, s, _ in statuses(db, event.id)), 60, "all decided"
    )
    line = statuses(db, event.id)
    assert [s for _, _, s, _ in line] == ["confirmed"] * 5 + ["waitlisted"] * 195
    http = httpx.Client(base_url=api_server.url, timeout=30)
    places = [
        http.get(f"/api/bookings/{b}", headers={"Authorization": f"Bearer {token[u]}"}).json()[
            "data"
        ]["queuePosition"]
        for b, _, _, u in line
    ]
    assert places == [None] * 5 + list(range(1, 196))

    # One more, with Prefer: wait: answered as soon as it is waitlisted, with its place.
    late = make_user()
    late_headers = {"Authorization": f"Bearer {token_for(late)}"}
    asked = time.monotonic()
    answer = http.post(
        "/api/bookings", json={"eventId": event.id}, headers={**late_headers, "Prefer": "wait=30"}
    )
    assert time.monotonic() - asked < 30  # not the whole wait: waitlisted is an answer
    assert answer.status_code == 202, answer.text
    assert answer.json()["data"]["status"] == "waitlisted"
    assert answer.json()["data"]["queuePosition"] == 196
    # Someone ahead leaves: 202, cancelled by the worker, and the places behind move up.
    leaving, _, _, owner = line[10]
    owner_headers = {"Authorization": f"Bearer {token[owner]}"}
    left = http.delete(f"/api/bookings/{leaving}", headers=owner_headers)
    assert left.status_code == 202 and left.json()["data"]["cancelRequestedAt"]
    gone = http.get(f"/api/bookings/{leaving}", headers={**owner_headers, "Prefer": "wait=20"})
    assert gone.status_code == 200 and gone.json()["data"]["status"] == "cancelled"
    assert gone.json()["data"]["queuePosition"] is None
    again = http.get(f"/api/bookings/{answer.json()['data']['bookingId']}", headers=late_headers)
    assert again.json()["data"]["queuePosition"] == 195
    assert http.get(f"/api/events/{event.id}").json()["data"]["waitlistLength"] == 195
    http.close()


def test_a_burst_past_the_bound_loses_nothing_it_accepted(
    worker, db, make_user, make_event, token_for
):
    """A waitlist event with its seats taken: every request stays in the line, so exactly the
    bound is accepted; each of those is stored and decided (waitlisted), the rest are told
    QUEUE_FULL with a Retry-After and stored nowhere."""
    bound = 40
    event = waitlist_on(db, make_event(capacity=3))
    proc = ApiProcess("api-queue-bound", QUEUE_MAX_PER_EVENT=str(bound)).start()
    try:
        holder = {"Authorization": f"Bearer {token_for(make_user())}", "Prefer": "wait=20"}
        taken = httpx.post(
            f"{proc.url}/api/bookings",
            json={"eventId": event.id, "quantity": 3},
            headers=holder,
            timeout=30,
        )
        assert taken.status_code == 201, taken.text
        responses = burst(proc.url, [token_for(make_user()) for _ in range(120)], event.id)
    finally:
        proc.stop()
    accepted = {r.json()["data"]["bookingId"] for r in responses if r.status_code == 202}
    refused = [r for r in responses if r.status_code != 202]
    assert len(accepted) == bound
    assert {r.json()["error"]["code"] for r in refused} == {"QUEUE_FULL"}
    assert all(1 <= int(r.headers["Retry-After"]) <= 60 for r in refused)
    wait_until(
        lambda: all(s != "pending" for _, _, s, _ in statuses(db, event.id)), 60, "all decided"
    )
    line = [(b, s) for b, _, s, _ in statuses(db, event.id)][1:]
    assert {b for b, _ in line} == accepted
    assert {s for _, s in line} == {"waitlisted"}
