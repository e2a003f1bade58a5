"""The lean path of intake: group commit, refusals from memory, the token cache, the lean path.

Real PostgreSQL, Redis and Celery worker throughout; nothing here measures time.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DataError

from common.bookings.intake import IntakeRequest, IntakeWriter
from common.bookings.schemas import BookingCreate, EventFacts
from common.bookings.service import new_booking_id
from common.errors import InvalidToken
from common.security import ALGORITHM
from devstack import wait_until

WAIT = {"Prefer": "wait=25"}
# One more seat, straight in the database: no message tells the API (as if it were lost).
GROW = (
    "UPDATE events SET seat_capacity = seat_capacity + 1, available_seats = available_seats + 1"
    " WHERE id = :e"
)


def book(client, headers, event_id, quantity=1, **extra):
    return client.post(
        "/api/bookings",
        json={"eventId": event_id, "quantity": quantity},
        headers={**headers, **extra},
    )


@pytest.fixture
def app_with(engine, settings):
    """A TestClient over an app with some settings changed."""
    from api.app import create_app

    clients: list[TestClient] = []

    def make(**changes) -> TestClient:
        client = TestClient(create_app(settings.model_copy(update=changes)))
        clients.append(client.__enter__())
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


# ---------------------------------------------------------------- group commit


def test_concurrent_posts_are_each_answered_after_their_commit(
    client, make_user, make_event, auth, db
):
    event = make_event(capacity=100)
    users = [make_user() for _ in range(40)]

    def post(user):
        response = book(client, auth(user), event.id)
        booking_id = response.json()["data"]["bookingId"]
        # Read from another connection the moment the answer arrives: already committed.
        with client.app.state.engine.connect() as conn:
            stored = conn.execute(
                text("SELECT user_id FROM bookings WHERE booking_id = :b"), {"b": booking_id}
            ).scalar_one_or_none()
        return response.status_code, stored, user.id

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(post, users))
    assert all(code == 202 and stored == user_id for code, stored, user_id in results)
    count = db.execute(
        text("SELECT count(*) FROM bookings WHERE event_id = :e"), {"e": event.id}
    ).scalar_one()
    assert count == 40


def test_a_batch_is_one_commit_and_a_bad_request_fails_alone(
    session_factory, make_user, make_event, db
):
    event = make_event(capacity=100)
    users = [make_user() for _ in range(8)]
    signalled: list[int] = []
    observed: list[tuple[int, EventFacts]] = []
    writer = IntakeWriter(
        session_factory,
        signalled.append,
        max_pending=20,
        window=0.05,
        batch_size=100,
        writers=1,
        observe=lambda event_id, facts, seen: observed.append((event_id, facts)),
    )

    def request(user_id: int) -> IntakeRequest:
        return IntakeRequest(user_id, BookingCreate(eventId=event.id, quantity=1), new_booking_id())

    async def run(requests):
        return await asyncio.gather(*(writer.submit(r) for r in requests), return_exceptions=True)

    try:
        good = [request(u.id) for u in users]
        outcomes = asyncio.run(run(good))
        assert all(created for _, created in outcomes)
        # All in one transaction: one commit, one created_at (the transaction's start).
        stamps = db.execute(
            text("SELECT count(DISTINCT created_at) FROM bookings WHERE event_id = :e"),
            {"e": event.id},
        ).scalar_one()
        assert stamps == 1
        # One signal for the batch, not one per request; sent once the requests are answered.
        wait_until(lambda: signalled, 30, "the batch's signal")
        assert signalled == [event.id]
        # What the batch read of the event feeds the seat snapshots.
        event_id, facts = observed[0]
        assert event_id == event.id
        assert (facts.available, facts.version, facts.max_per_user) == (
            100,
            event.version,
            event.max_seats_per_user,
        )

        # A user id no row can have is an unknown user. A quantity PostgreSQL cannot hold (the
        # schema's check skipped) breaks the batch's statement: each request is then stored
        # alone, and that one fails alone.
        more = [request(u.id) for u in users[:3]]
        stranger = request(2**40)
        huge = BookingCreate.model_construct(event_id=event.id, quantity=2**40)
        broken = IntakeRequest(users[3].id, huge, new_booking_id())
        outcomes = asyncio.run(run([more[0], stranger, broken, *more[1:]]))
    finally:
        writer.close()
    assert isinstance(outcomes[1], InvalidToken)
    assert isinstance(outcomes[2], DataError)
    assert all(created for _, created in (outcomes[0], *outcomes[3:]))
    stored = db.execute(
        text("SELECT count(*) FROM bookings WHERE booking_id = ANY(:ids)"),
        {"ids": [r.booking_id for r in more]},
    ).scalar_one()
    assert stored == 3


# ---------------------------------------------------------------- refusals from memory


def test_sold_out_is_refused_then_accepted_again_after_a_cancellation(
    app_with, worker, make_user, make_event, auth, db
):
    # A snapshot that never ages: only the cancellation's seat message can reopen the event.
    client = app_with(SEAT_SNAPSHOT_MAX_AGE=3600)
    owner, other = make_user(), make_user()
    event = make_event(capacity=2)
    first = book(client, auth(owner), event.id, 2, **WAIT)
    assert first.status_code == 201

    refused = book(client, auth(other), event.id, 1)
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "SOLD_OUT"
    mine = db.execute(
        text("SELECT count(*) FROM bookings WHERE user_id = :u"), {"u": other.id}
    ).scalar_one()
    assert mine == 0

    booking_id = first.json()["data"]["bookingId"]
    cancel = client.delete(f"/api/bookings/{booking_id}", headers={**auth(owner), **WAIT})
    assert cancel.status_code == 200
    again = book(client, auth(other), event.id, 2, **WAIT)
    assert again.status_code == 201


def test_a_fresh_snapshot_refuses_without_reading_the_database(
    app_with, worker, make_user, make_event, auth, db
):
    client = app_with(SEAT_SNAPSHOT_MAX_AGE=3600)
    event = make_event(capacity=1)
    assert book(client, auth(make_user()), event.id, 1, **WAIT).status_code == 201
    assert book(client, auth(make_user()), event.id, 1).status_code == 409
    # Seats appear in the database with no message (as if it were lost): within the bound the
    # snapshot still refuses, and nothing is stored; a request with an Idempotency-Key always
    # asks the database.
    db.execute(text(GROW), {"e": event.id})
    db.commit()
    late = make_user()
    assert book(client, auth(late), event.id, 1).status_code == 409
    keyed = book(client, auth(late), event.id, 1, **{"Idempotency-Key": "k1"})
    assert keyed.status_code == 202


def test_without_a_fresh_snapshot_the_database_decides(
    app_with, worker, make_user, make_event, auth, db
):
    client = app_with(SEAT_SNAPSHOT_MAX_AGE=0)  # no refusals from memory at all
    event = make_event(capacity=1)
    assert book(client, auth(make_user()), event.id, 1, **WAIT).status_code == 201
    assert book(client, auth(make_user()), event.id, 1).status_code == 409
    db.execute(text(GROW), {"e": event.id})
    db.commit()
    assert book(client, auth(make_user()), event.id, 1).status_code == 202


# ---------------------------------------------------------------- token cache


def _token(user_id: int, secret: str, expires: datetime) -> str:
    now = datetime.now(UTC)
    claims = {"sub": str(user_id), "role": "user", "iat": now, "nbf": now, "exp": expires}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def test_a_cached_token_is_refused_once_it_expires(client, settings, make_user, make_event):
    user, event = make_user(), make_event()
    expires = datetime.now(UTC) + timedelta(seconds=2)
    token = _token(user.id, settings.JWT_SECRET.get_secret_value(), expires)
    headers = {"Authorization": f"Bearer {token}"}
    assert book(client, headers, event.id).status_code == 202  # verified and cached
    while time.time() <= expires.timestamp():
        time.sleep(0.2)
    for response in (
        book(client, headers, event.id),
        client.get("/api/bookings/user/me", headers=headers),
    ):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "INVALID_TOKEN"


def test_a_deleted_users_cached_token_stops_working_at_once(
    client, make_user, make_event, auth, db
):
    user, event = make_user(), make_event()
    headers = auth(user)
    assert client.get("/api/bookings/bk_unknown", headers=headers).status_code == 404  # cached
    db.execute(text("DELETE FROM users WHERE id = :u"), {"u": user.id})
    db.commit()
    for response in (
        book(client, headers, event.id),
        client.get("/api/bookings/bk_unknown", headers=headers),
        client.get("/api/bookings/user/me", headers=headers),
    ):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "INVALID_TOKEN"


# ---------------------------------------------------------------- the lean path


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"eventId": "1", "quantity": 1}, None),  # lax rules of pydantic: whatever they say
        ({"eventId": 1, "quantity": True}, None),
        ({"eventId": 1, "quantity": 1.0}, None),
        ({"eventId": 1, "quantity": 0}, 400),
        ({"eventId": 1, "seats": 1}, 400),
        ({"eventId": 2**31}, 400),
        ([1], 400),
    ],
)
def test_unusual_bodies_get_the_full_paths_answer(
    client, app_with, make_user, make_event, auth, body, code
):
    """The same request answered with and without the lean path."""
    event = make_event()
    body = (
        [1]
        if body == [1]
        else {k: (event.id if v == 1 and k == "eventId" else v) for k, v in body.items()}
    )
    full = app_with(LEAN_PATH=False)
    answers = []
    for app in (client, full):
        response = app.post("/api/bookings", json=body, headers=auth(make_user()))
        error = response.json().get("error") or {}
        answers.append((response.status_code, error.get("code"), error.get("details")))
    assert answers[0] == answers[1]
    if code is not None:
        assert answers[0][:2] == (code, "VALIDATION_ERROR")


def test_lean_answers_carry_the_request_id_and_are_counted(client, make_user, make_event, auth):
    from prometheus_client import REGISTRY

    def count(status: str) -> float:
        labels = {"method": "POST", "route": "/api/bookings", "status": status}
        return REGISTRY.get_sample_value("ebs_http_requests_total", labels) or 0.0

    event = make_event()
    before = count("202"), count("401")
    response = book(client, auth(make_user()), event.id, **{"X-Request-ID": "abc-123"})
    assert response.status_code == 202
    assert response.headers["x-request-id"] == "abc-123"
    bad = client.post(
        "/api/bookings", json={"eventId": event.id}, headers={"Authorization": "Bearer nope"}
    )
    assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"
    assert bad.headers["x-request-id"]
    assert (count("202"), count("401")) == (before[0] + 1, before[1] + 1)
