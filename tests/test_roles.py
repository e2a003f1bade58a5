"""The role matrix: every route as anonymous, the owner, another user and an admin.

The event is created by ``creator`` (an admin); the booking belongs to ``owner``. Someone
else's booking is 404 (its existence is not revealed); an admin-only action is 403.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

ROUTES = [
    # method, path, body, {actor: expected status}
    ("GET", "/api/auth/me", None, {"anon": 401, "owner": 200, "other": 200, "admin": 200}),
    ("GET", "/api/events", None, {"anon": 200, "owner": 200, "other": 200, "admin": 200}),
    ("GET", "/api/events/{event}", None, {"anon": 200, "owner": 200, "other": 200, "admin": 200}),
    (
        "POST",
        "/api/events",
        "event",
        {"anon": 401, "owner": 403, "other": 403, "admin": 201, "creator": 201},
    ),
    (
        "PUT",
        "/api/events/{event}",
        {"name": "Renamed"},
        {"anon": 401, "owner": 403, "other": 403, "admin": 200, "creator": 200},
    ),
    (
        "DELETE",
        "/api/events/{empty_event}",
        None,
        {"anon": 401, "owner": 403, "other": 403, "admin": 200, "creator": 200},
    ),
    (
        "POST",
        "/api/bookings",
        "booking",
        {"anon": 401, "owner": 202, "other": 202, "admin": 202},
    ),
    (
        "GET",
        "/api/bookings/{booking}",
        None,
        {"anon": 401, "owner": 200, "other": 404, "admin": 200},
    ),
    (
        "GET",
        "/api/bookings/{booking}/logs",
        None,
        {"anon": 401, "owner": 200, "other": 404, "admin": 200},
    ),
    (
        "DELETE",
        "/api/bookings/{booking}",
        None,
        {"anon": 401, "owner": 202, "other": 404, "admin": 202},
    ),
    ("GET", "/api/bookings/user/me", None, {"anon": 401, "owner": 200, "other": 200, "admin": 200}),
    (
        "GET",
        "/api/bookings/admin/events/{event}",
        None,
        {"anon": 401, "owner": 403, "other": 403, "admin": 200, "creator": 200},
    ),
]

CASES = [
    pytest.param(method, path, body, actor, status, id=f"{method} {path} as {actor}")
    for method, path, body, expected in ROUTES
    for actor, status in expected.items()
]


@pytest.fixture
def world(make_user, make_event, db, settings):
    from datetime import UTC, datetime

    creator = make_user("admin", email="creator@example.com")
    actors = {
        "creator": creator,
        "admin": make_user("admin", email="admin@example.com"),
        "owner": make_user(email="owner@example.com"),
        "other": make_user(email="other@example.com"),
        "anon": None,
    }
    event = make_event(capacity=10, available=9, created_by=creator.id)
    empty_event = make_event(created_by=creator.id)
    db.execute(
        text(
            "INSERT INTO bookings (booking_id, user_id, event_id, status, decided_at)"
            " VALUES ('bk_owned', :u, :e, 'confirmed', now())"
        ),
        {"u": actors["owner"].id, "e": event.id},
    )
    db.commit()
    bodies = {
        "event": {
            "name": "New",
            "eventDate": (datetime.now(UTC) + timedelta(days=3)).isoformat(),
            "seatCapacity": 10,
        },
        "booking": {"eventId": event.id, "quantity": 1},
    }
    ids = {"event": event.id, "empty_event": empty_event.id, "booking": "bk_owned"}
    return actors, ids, bodies


@pytest.mark.parametrize(("method", "path", "body", "actor", "expected"), CASES)
def test_role_matrix(client, auth, world, method, path, body, actor, expected):
    actors, ids, bodies = world
    headers = auth(actors[actor]) if actors[actor] else {}
    json_body = bodies.get(body, body) if isinstance(body, str) else body
    response = client.request(method, path.format(**ids), json=json_body, headers=headers)
    assert response.status_code == expected, response.text
    assert response.json()["success"] is (expected < 400)
