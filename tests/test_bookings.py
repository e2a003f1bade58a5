"""The booking pipeline through the API with a real Celery worker deciding in PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import text

WAIT = {"Prefer": "wait=25"}


def book(client, user_headers, event_id, quantity=1, **headers):
    return client.post(
        "/api/bookings",
        json={"eventId": event_id, "quantity": quantity},
        headers={**user_headers, **headers},
    )


def seats(client, event_id) -> int:
    return client.get(f"/api/events/{event_id}").json()["data"]["availableSeats"]


def test_post_answers_202_at_once_with_location(client, make_user, make_event, auth, db):
    user, event = make_user(), make_event()
    response = book(client, auth(user), event.id)
    assert response.status_code == 202
    data = response.json()["data"]
    assert data["status"] == "pending"
    assert data["quantity"] == 1 and data["eventId"] == event.id
    assert response.headers["location"] == f"/api/bookings/{data['bookingId']}"
    # Already committed when answered (a worker may have decided it since).
    stored = db.execute(
        text("SELECT status FROM bookings WHERE booking_id = :b"), {"b": data["bookingId"]}
    ).scalar_one()
    assert stored in ("pending", "confirmed")


def test_prefer_wait_returns_the_decision(client, worker, make_user, make_event, auth):
    user, event = make_user(), make_event(capacity=3)
    response = book(client, auth(user), event.id, 2, **WAIT)
    assert response.status_code == 201
    assert response.headers["preference-applied"] == "wait=25"
    booking = response.json()["data"]
    assert booking["status"] == "confirmed" and booking["decidedAt"]
    assert seats(client, event.id) == 1
    got = client.get(f"/api/bookings/{booking['bookingId']}", headers=auth(user))
    assert got.json()["data"]["status"] == "confirmed"


def test_quantity_greater_than_one_near_sell_out(client, worker, make_user, make_event, auth, db):
    event = make_event(capacity=3)
    first = book(client, auth(make_user()), event.id, 2, **WAIT)
    assert first.status_code == 201
    # One seat left: asking for two is refused at intake, and nothing is stored.
    second = book(client, auth(make_user()), event.id, 2, **WAIT)
    assert second.status_code == 409
    error = second.json()["error"]
    assert error["code"] == "SOLD_OUT"
    assert error["details"] == [{"field": "quantity", "message": "1 seats left"}]
    assert book(client, auth(make_user()), event.id, 1, **WAIT).status_code == 201
    assert seats(client, event.id) == 0
    stored = db.execute(text("SELECT count(*) FROM bookings WHERE event_id = :e"), {"e": event.id})
    assert stored.scalar_one() == 2


def test_requests_queued_together_near_sell_out_are_decided_in_arrival_order(
    client, worker, make_user, make_event, auth, db
):
    # Both pass intake (3 seats showing); the worker decides them in order.
    event = make_event(capacity=3)
    users = [make_user() for _ in range(3)]
    for user, quantity in zip(users, (2, 2, 1), strict=True):
        insert = "INSERT INTO bookings (booking_id, user_id, event_id, quantity)"
        db.execute(
            text(insert + " VALUES (:b, :u, :e, :q)"),
            {"b": f"bk_order{quantity}{user.id}", "u": user.id, "e": event.id, "q": quantity},
        )
    db.commit()
    client.app.state.signal(event.id)
    results = [
        client.get(f"/api/bookings/bk_order{q}{u.id}", headers={**auth(u), **WAIT})
        for u, q in zip(users, (2, 2, 1), strict=True)
    ]
    assert [r.status_code for r in results] == [200, 409, 200]
    rejected = results[1].json()["error"]
    assert rejected["code"] == "SOLD_OUT"
    assert rejected["details"] == [{"bookingId": f"bk_order2{users[1].id}"}]
    assert seats(client, event.id) == 0


def test_per_user_limit_across_requests(client, worker, make_user, make_event, auth):
    user, event = make_user(), make_event(capacity=100, max_per_user=4)
    headers = auth(user)
    assert book(client, headers, event.id, 2, **WAIT).status_code == 201
    assert book(client, headers, event.id, 2, **WAIT).status_code == 201
    over = book(client, headers, event.id, 1, **WAIT)
    assert over.status_code == 409
    assert over.json()["error"]["code"] == "LIMIT_EXCEEDED"
    assert book(client, auth(make_user()), event.id, 4, **WAIT).status_code == 201
    too_many = book(client, headers, event.id, 5)
    assert too_many.status_code == 400
    assert too_many.json()["error"]["details"][0]["field"] == "quantity"


def test_cheap_checks_at_intake(client, make_user, make_event, auth):
    user = make_user()
    assert book(client, auth(user), 999_999).status_code == 404
    past = make_event(starts_in=timedelta(minutes=-1))
    response = book(client, auth(user), past.id)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "EVENT_PAST"
    for quantity in (0, -1, 1001):
        assert book(client, auth(user), past.id, quantity).status_code == 400
    status = client.post(
        "/api/bookings", json={"eventId": past.id, "status": "confirmed"}, headers=auth(user)
    )
    assert status.status_code == 400


def test_event_that_starts_while_queued_is_rejected_event_past(
    client, worker, make_user, make_event, auth, db
):
    user, event = make_user(), make_event()
    booking = book(client, auth(user), event.id, **WAIT).json()["data"]
    # Move the start into the past and put the request back in the queue (events first, then
    # bookings: the worker's lock order).
    db.execute(
        text(
            "UPDATE events SET event_date = now() - interval '1 minute',"
            " available_seats = seat_capacity WHERE id = :e"
        ),
        {"e": event.id},
    )
    db.execute(
        text("UPDATE bookings SET status='pending', decided_at=NULL WHERE booking_id=:b"),
        {"b": booking["bookingId"]},
    )
    db.commit()
    client.app.state.redis.delete(f"ebs:signal:event:{event.id}")
    client.app.state.signal(event.id)
    response = client.get(f"/api/bookings/{booking['bookingId']}", headers={**auth(user), **WAIT})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "EVENT_PAST"


def test_cancel_then_rebook(client, worker, make_user, make_event, auth):
    owner, other = make_user(), make_user()
    event = make_event(capacity=2)
    booking = book(client, auth(owner), event.id, 2, **WAIT).json()["data"]
    assert book(client, auth(other), event.id, 1, **WAIT).status_code == 409
    cancel = client.delete(f"/api/bookings/{booking['bookingId']}", headers={**auth(owner), **WAIT})
    assert cancel.status_code == 200
    assert cancel.json()["data"]["status"] == "cancelled"
    assert seats(client, event.id) == 2
    assert book(client, auth(other), event.id, 2, **WAIT).status_code == 201
    again = client.delete(f"/api/bookings/{booking['bookingId']}", headers=auth(owner))
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "ALREADY_CANCELLED"
    logs = client.get(f"/api/bookings/{booking['bookingId']}/logs", headers=auth(owner)).json()
    assert [entry["action"] for entry in logs["data"]] == ["confirmed", "cancelled"]


def test_cancel_without_wait_is_accepted_then_decided(client, worker, make_user, make_event, auth):
    owner = make_user()
    event = make_event(capacity=5)
    booking = book(client, auth(owner), event.id, 3, **WAIT).json()["data"]
    response = client.delete(f"/api/bookings/{booking['bookingId']}", headers=auth(owner))
    assert response.status_code == 202
    assert response.json()["data"]["cancelRequestedAt"]
    # Asking twice while it is being decided is harmless.
    assert client.delete(
        f"/api/bookings/{booking['bookingId']}", headers=auth(owner)
    ).status_code in (200, 202, 409)
    final = client.get(f"/api/bookings/{booking['bookingId']}", headers={**auth(owner), **WAIT})
    assert final.json()["data"]["status"] == "cancelled"
    assert seats(client, event.id) == 5


def test_rejected_or_started_bookings_cannot_be_cancelled(
    client, worker, make_user, make_event, auth, db
):
    owner = make_user()
    event = make_event(capacity=5, max_per_user=1)
    book(client, auth(owner), event.id, 1, **WAIT)
    rejected = book(client, auth(owner), event.id, 1, **WAIT).json()["error"]["details"][0]
    response = client.delete(f"/api/bookings/{rejected['bookingId']}", headers=auth(owner))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "BOOKING_REJECTED"

    later = make_event(capacity=5)
    booking = book(client, auth(owner), later.id, 1, **WAIT).json()["data"]
    db.execute(
        text("UPDATE events SET event_date = now() - interval '1 minute' WHERE id = :e"),
        {"e": later.id},
    )
    db.commit()
    response = client.delete(f"/api/bookings/{booking['bookingId']}", headers=auth(owner))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "EVENT_PAST"


def test_prefer_wait_answers_202_while_still_pending(client, make_user, make_event, auth, db):
    # A request nobody signalled: no worker will decide it within the wait.
    user, event = make_user(), make_event()
    db.execute(
        text("INSERT INTO bookings (booking_id, user_id, event_id) VALUES ('bk_quiet', :u, :e)"),
        {"u": user.id, "e": event.id},
    )
    db.commit()
    response = client.get("/api/bookings/bk_quiet", headers={**auth(user), "Prefer": "wait=1"})
    assert response.status_code == 202
    assert response.json()["data"]["status"] == "pending"


def test_idempotency_key_returns_the_same_booking(client, make_user, make_event, auth, db):
    user, event = make_user(), make_event()
    headers = {**auth(user), "Idempotency-Key": "order-42"}
    first = book(client, headers, event.id, 2).json()["data"]
    second = book(client, headers, event.id, 2).json()["data"]
    assert first["bookingId"] == second["bookingId"]
    reused = book(client, headers, event.id, 3)
    assert reused.status_code == 409
    assert reused.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    # Keys are per user: another user's same key is another booking.
    other = book(client, {**auth(make_user()), "Idempotency-Key": "order-42"}, event.id, 2)
    assert other.json()["data"]["bookingId"] != first["bookingId"]


def test_idempotency_race(client, make_user, make_event, auth, db):
    user, event = make_user(), make_event()
    headers = {**auth(user), "Idempotency-Key": "race"}
    results: list[str] = []
    barrier = threading.Barrier(12)

    def attempt() -> None:
        barrier.wait()
        response = book(client, headers, event.id, 1)
        results.append(response.json()["data"]["bookingId"])

    threads = [threading.Thread(target=attempt) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 12 and len(set(results)) == 1
    count = db.execute(
        text("SELECT count(*) FROM bookings WHERE user_id = :u"), {"u": user.id}
    ).scalar_one()
    assert count == 1


def test_my_bookings_newest_first_with_status_filter(client, worker, make_user, make_event, auth):
    user = make_user()
    event = make_event(capacity=5, max_per_user=1)
    first = book(client, auth(user), event.id, 1, **WAIT).json()["data"]
    second = book(client, auth(user), event.id, 1, **WAIT).json()["error"]["details"][0]
    page = client.get("/api/bookings/user/me", headers=auth(user)).json()["data"]
    assert [b["bookingId"] for b in page["bookings"]] == [second["bookingId"], first["bookingId"]]
    rejected = client.get(
        "/api/bookings/user/me", params={"status": "rejected"}, headers=auth(user)
    ).json()["data"]
    assert [b["reason"] for b in rejected["bookings"]] == ["limit_exceeded"]
    assert (
        client.get(
            "/api/bookings/user/me", params={"status": "bogus"}, headers=auth(user)
        ).status_code
        == 400
    )


def test_event_bookings_for_admin_as_json_and_csv(client, worker, make_user, make_event, auth):
    creator = make_user("admin")
    event = make_event(capacity=5, created_by=creator.id)
    for _ in range(3):
        book(client, auth(make_user()), event.id, 1, **WAIT)
    page = client.get(
        f"/api/bookings/admin/events/{event.id}", params={"limit": 2}, headers=auth(creator)
    ).json()["data"]
    assert page["total"] == 3 and page["hasMore"] is True
    csv = client.get(
        f"/api/bookings/admin/events/{event.id}",
        headers={**auth(creator), "Accept": "text/csv"},
    )
    assert csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.strip().splitlines()
    assert lines[0].startswith("booking_id,user_id,event_id,quantity,status")
    assert len(lines) == 4 and all(",confirmed," in line for line in lines[1:])


@pytest.mark.parametrize("path", ["/api/bookings/bk_nope", "/api/bookings/bk_nope/logs"])
def test_unknown_booking_is_404(client, make_user, auth, path):
    response = client.get(path, headers=auth(make_user()))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "BOOKING_NOT_FOUND"
