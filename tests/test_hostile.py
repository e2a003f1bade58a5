"""Hostile input: forged tokens, other people's objects, privilege and mass assignment, oversized
and chunked bodies, bcrypt's 72-byte edge, paging limits, login throttling and the per-user cap
on booking requests in flight. None of it may ever be a 500.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
from sqlalchemy import text

from tests.conftest import ApiProcess

SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_for(user_id: int, **overrides: object) -> dict[str, object]:
    now = datetime.now(UTC)
    claims: dict[str, object] = {
        "sub": str(user_id),
        "role": "admin",
        "iat": now,
        "nbf": now,
        "exp": now + timedelta(hours=1),
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def unsigned(claims: dict[str, object]) -> str:
    body = {k: int(v.timestamp()) if isinstance(v, datetime) else v for k, v in claims.items()}
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(body).encode())}."


def hs512(claims: dict[str, object]) -> str:
    # By hand: pyjwt warns (an error here) that the test secret is short for SHA-512.
    body = {k: int(v.timestamp()) if isinstance(v, datetime) else v for k, v in claims.items()}
    header = b64(json.dumps({"alg": "HS512", "typ": "JWT"}).encode())
    signing_input = f"{header}.{b64(json.dumps(body).encode())}"
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha512).digest()
    return f"{signing_input}.{b64(signature)}"


FORGERIES = {
    "alg none": lambda uid: unsigned(claims_for(uid)),
    "alg none, signature kept": lambda uid: unsigned(claims_for(uid)) + "c2ln",
    "wrong key": lambda uid: jwt.encode(claims_for(uid), "x" * 64, algorithm="HS256"),
    "HS512 with the right key": lambda uid: hs512(claims_for(uid)),
    "no exp": lambda uid: jwt.encode(claims_for(uid, exp=None), SECRET, algorithm="HS256"),
    "no iat": lambda uid: jwt.encode(claims_for(uid, iat=None), SECRET, algorithm="HS256"),
    "no sub": lambda uid: jwt.encode(claims_for(uid, sub=None), SECRET, algorithm="HS256"),
    "sub not a number": lambda uid: jwt.encode(claims_for(uid, sub="1 OR 1=1"), SECRET),
    "expired": lambda uid: jwt.encode(
        claims_for(uid, exp=datetime.now(UTC) - timedelta(seconds=5)), SECRET
    ),
    "nbf in the future": lambda uid: jwt.encode(
        claims_for(uid, nbf=datetime.now(UTC) + timedelta(minutes=10)), SECRET
    ),
    "garbage": lambda uid: "not.a.token",
    "empty": lambda uid: "",
}


def test_the_test_secret_is_the_servers(settings):
    # The forgeries below are only meaningful if "the right key" really is the right key.
    assert settings.JWT_SECRET.get_secret_value() == SECRET


@pytest.mark.parametrize("forgery", FORGERIES, ids=list(FORGERIES))
def test_forged_tokens_are_401(client, make_user, make_event, forgery):
    user = make_user()
    event = make_event()
    token = FORGERIES[forgery](user.id)
    headers = {"Authorization": f"Bearer {token}"}
    for method, path, body in [
        ("GET", "/api/auth/me", None),
        ("POST", "/api/events", {"name": "x"}),
        ("POST", "/api/bookings", {"eventId": event.id}),
        ("GET", "/api/bookings/bk_000000000000000000000000", None),
        ("GET", "/api/bookings/user/me", None),
    ]:
        response = client.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (forgery, path, response.text)
        assert response.json()["error"]["code"] in ("UNAUTHORIZED", "INVALID_TOKEN")
    # Nothing was accepted on the forged identity's behalf.
    assert client.get(f"/api/events/{event.id}").json()["data"]["availableSeats"] == 100


def test_a_deleted_users_token_is_401(client, make_user, auth, db):
    user = make_user()
    headers = auth(user)
    assert client.get("/api/auth/me", headers=headers).status_code == 200
    db.execute(text("DELETE FROM users WHERE id = :id"), {"id": user.id})
    db.commit()
    for path in ("/api/auth/me", "/api/bookings/user/me"):
        assert client.get(path, headers=headers).status_code == 401
    response = client.post("/api/bookings", json={"eventId": 1}, headers=headers)
    assert response.status_code == 401


def test_the_role_claim_is_not_trusted(client, make_user, make_event, settings):
    """A genuine token whose role claim says admin grants nothing: the role comes from the DB."""
    user = make_user()
    token = jwt.encode(claims_for(user.id, role="admin"), SECRET, algorithm="HS256")
    headers = {"Authorization": f"Bearer {token}"}
    event = make_event()
    assert (
        client.put(f"/api/events/{event.id}", json={"name": "x"}, headers=headers).status_code
        == 403
    )


# ---------------------------------------------------------------- other people's objects


# Every path with an id in the OpenAPI schema, and what it answers for someone else's object.
ID_ROUTES = {
    ("get", "/api/events/{event_id}"): "public",
    ("put", "/api/events/{event_id}"): 403,
    ("delete", "/api/events/{event_id}"): 403,
    ("get", "/api/bookings/admin/events/{event_id}"): 403,
    ("get", "/api/bookings/{booking_id}"): 404,
    ("delete", "/api/bookings/{booking_id}"): 404,
    ("get", "/api/bookings/{booking_id}/logs"): 404,
    ("post", "/api/bookings/{booking_id}/confirm"): 404,
}
# Someone else's webhook endpoint answers like a missing one; each with a body the route accepts.
WEBHOOK_ROUTES = {
    ("get", "/api/webhooks/{webhook_id}"): None,
    ("put", "/api/webhooks/{webhook_id}"): {"enabled": False},
    ("delete", "/api/webhooks/{webhook_id}"): None,
    ("post", "/api/webhooks/{webhook_id}/rotate-secret"): {},
    ("get", "/api/webhooks/{webhook_id}/deliveries"): None,
    ("post", "/api/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"): None,
    ("post", "/api/webhooks/{webhook_id}/redeliver"): {"since": "2026-01-01T00:00:00Z"},
}


def test_every_route_with_an_id_is_listed_here(client):
    """A new route taking an id must be added to ID_ROUTES (and so tested below)."""
    paths = client.get("/openapi.json").json()["paths"]
    found = {(m, p) for p, ops in paths.items() if "{" in p for m in ops}
    assert found == set(ID_ROUTES) | set(WEBHOOK_ROUTES)


@pytest.mark.parametrize(("method", "path"), list(WEBHOOK_ROUTES))
def test_someone_elses_webhook_is_404_like_a_missing_one(
    client, make_user, make_event, auth, method, path
):
    owner = make_user()
    event = make_event(created_by=owner.id)
    made = client.post(
        "/api/webhooks",
        json={"url": "http://127.0.0.1:9/hook", "eventId": event.id},
        headers=auth(owner),
    )
    assert made.status_code == 201, made.text
    intruder = auth(make_user())
    body = WEBHOOK_ROUTES[(method, path)]
    theirs = client.request(
        method,
        path.format(webhook_id=made.json()["data"]["id"], delivery_id=1),
        json=body,
        headers=intruder,
    )
    missing = client.request(
        method, path.format(webhook_id=2**31 - 1, delivery_id=1), json=body, headers=intruder
    )
    assert theirs.status_code == 404, theirs.text
    assert theirs.json()["error"] == missing.json()["error"]
    # And it is untouched: its owner still reads it as it was.
    mine = client.get(f"/api/webhooks/{made.json()['data']['id']}", headers=auth(owner))
    assert mine.status_code == 200 and mine.json()["data"]["enabled"] is True


@pytest.fixture
def someone_elses(client, make_user, make_event, auth, db):
    admin = make_user("admin")
    owner = make_user()
    event = make_event(created_by=admin.id)
    booking = client.post("/api/bookings", json={"eventId": event.id}, headers=auth(owner))
    assert booking.status_code == 202
    return {"event_id": event.id, "booking_id": booking.json()["data"]["bookingId"]}


@pytest.mark.parametrize("prefer", [None, "wait=2"])
@pytest.mark.parametrize(("method", "path"), [k for k, v in ID_ROUTES.items() if v == 404])
def test_someone_elses_booking_is_404_like_a_missing_one(
    client, make_user, auth, someone_elses, method, path, prefer
):
    intruder = auth(make_user())
    if prefer:
        intruder["Prefer"] = prefer
    theirs = client.request(method, path.format(**someone_elses), headers=intruder)
    missing = client.request(method, path.format(booking_id="bk_" + "0" * 24), headers=intruder)
    assert theirs.status_code == 404, theirs.text
    # Nothing tells an intruder that the booking exists.
    assert theirs.json()["error"] == missing.json()["error"]


@pytest.mark.parametrize(("method", "path"), [k for k, v in ID_ROUTES.items() if v == 403])
def test_admin_routes_are_403_for_a_user(client, make_user, auth, someone_elses, method, path):
    body = {"name": "Mine now"} if method == "put" else None
    response = client.request(
        method, path.format(**someone_elses), json=body, headers=auth(make_user())
    )
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "FORBIDDEN"


def test_creating_an_event_is_403_for_a_user(client, make_user, auth):
    body = {
        "name": "Mine",
        "eventDate": (datetime.now(UTC) + timedelta(days=3)).isoformat(),
        "seatCapacity": 10,
    }
    assert client.post("/api/events", json=body, headers=auth(make_user())).status_code == 403


def test_a_user_cannot_cancel_someone_elses_booking(client, make_user, auth, someone_elses, db):
    path = f"/api/bookings/{someone_elses['booking_id']}"
    assert client.delete(path, headers=auth(make_user())).status_code == 404
    requested = db.execute(
        text("SELECT cancel_requested_at FROM bookings WHERE booking_id = :b"),
        {"b": someone_elses["booking_id"]},
    ).scalar_one()
    assert requested is None


# ---------------------------------------------------------------- mass assignment


@pytest.mark.parametrize(
    ("path", "extra", "field"),
    [
        ("/api/auth/register", {"role": "admin"}, "role"),
        ("/api/auth/register", {"id": 1}, "id"),
        ("/api/bookings", {"status": "confirmed"}, "status"),
        ("/api/bookings", {"userId": 1}, "userId"),
        ("/api/bookings", {"bookingId": "bk_mine"}, "bookingId"),
        ("/api/events", {"availableSeats": 5}, "availableSeats"),
        ("/api/events", {"version": 99}, "version"),
        ("/api/events", {"createdBy": 1}, "createdBy"),
    ],
)
def test_mass_assignment_is_refused(client, make_user, make_event, auth, db, path, extra, field):
    admin = make_user("admin")
    bodies = {
        "/api/auth/register": {"email": "eve@example.com", "name": "Eve", "password": "password1"},
        "/api/bookings": {"eventId": make_event().id},
        "/api/events": {
            "name": "E",
            "eventDate": (datetime.now(UTC) + timedelta(days=3)).isoformat(),
            "seatCapacity": 10,
        },
    }
    response = client.post(path, json=bodies[path] | extra, headers=auth(admin))
    assert response.status_code == 400, response.text
    assert {"field": field, "message": "unknown field"} in response.json()["error"]["details"]
    assert db.execute(text("SELECT count(*) FROM bookings")).scalar_one() == 0
    assert db.execute(text("SELECT count(*) FROM users WHERE role = 'admin'")).scalar_one() == 1


def test_updating_an_event_cannot_set_its_seats_or_version(client, make_user, make_event, auth):
    admin = make_user("admin")
    event = make_event(created_by=admin.id)
    for extra in ({"availableSeats": 1}, {"version": 7}, {"id": 99}):
        response = client.put(f"/api/events/{event.id}", json=extra, headers=auth(admin))
        assert response.status_code == 400, extra


# ---------------------------------------------------------------- sizes and limits


BIG = b'{"eventId": 1, "pad": "' + b"x" * (70 * 1024) + b'"}'


@pytest.mark.parametrize("path", ["/api/auth/register", "/api/auth/login", "/api/bookings"])
def test_oversized_bodies_are_413(client, make_user, auth, path):
    headers = auth(make_user()) | {"Content-Type": "application/json"}
    response = client.post(path, content=BIG, headers=headers)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_a_lying_content_length_is_413(client):
    headers = {"Content-Type": "application/json", "Content-Length": "not-a-number"}
    response = client.post("/api/auth/login", content=b"{}", headers=headers)
    assert response.status_code in (400, 413)


@pytest.fixture(scope="module")
def real_api(engine):
    """uvicorn itself, so a chunked body really arrives as chunks with no Content-Length."""
    proc = ApiProcess("hostile-api").start()
    yield proc
    proc.stop()


@pytest.mark.parametrize("path", ["/api/auth/register", "/api/bookings"])
def test_chunked_bodies_over_the_limit_are_413(real_api, make_user, auth, path):
    def chunks():
        yield b'{"eventId": 1, "pad": "'
        for _ in range(80):
            yield b"x" * 1024
        yield b'"}'

    headers = auth(make_user()) | {"Content-Type": "application/json"}
    with httpx.Client(base_url=real_api.url, timeout=10) as http:
        response = http.post(path, content=chunks(), headers=headers)
        assert "content-length" not in {k.lower() for k in response.request.headers}
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    # The server is fine afterwards.
    assert httpx.get(f"{real_api.url}/health", timeout=5).status_code == 200


def test_small_chunked_bodies_still_work(real_api, make_user, make_event, auth):
    event = make_event()
    body = json.dumps({"eventId": event.id}).encode()
    headers = auth(make_user()) | {"Content-Type": "application/json"}
    response = httpx.post(
        f"{real_api.url}/api/bookings", content=iter([body[:5], body[5:]]), headers=headers
    )
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    "password", ["p" * 73, "é" * 37, "😀" * 19], ids=["73 ascii", "74 utf8", "76 emoji"]
)
@pytest.mark.parametrize("path", ["/api/auth/register", "/api/auth/login"])
def test_passwords_over_72_bytes_are_400_never_500(client, path, password):
    body = {"email": "long@example.com", "name": "Long", "password": password}
    if path.endswith("login"):
        body.pop("name")
    response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    assert [d["field"] for d in response.json()["error"]["details"]] == ["password"]


def test_a_72_byte_password_works(client):
    body = {"email": "edge@example.com", "name": "Edge", "password": "p" * 72}
    assert client.post("/api/auth/register", json=body).status_code == 201
    body.pop("name")
    assert client.post("/api/auth/login", json=body).status_code == 200


@pytest.mark.parametrize(
    "path", ["/api/events", "/api/bookings/user/me", "/api/bookings/admin/events/{event_id}"]
)
@pytest.mark.parametrize("query", ["limit=1000", "limit=0", "limit=-1", "offset=-1", "limit=x"])
def test_paging_outside_its_bounds_is_400(client, make_user, make_event, auth, path, query):
    admin = make_user("admin")
    event = make_event(created_by=admin.id)
    response = client.get(f"{path.format(event_id=event.id)}?{query}", headers=auth(admin))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"


# ---------------------------------------------------------------- throttling


def login(client, email: str, password: str = "wrong-password"):
    return client.post("/api/auth/login", json={"email": email, "password": password})


def test_login_attempts_are_limited_per_account(client, make_user, settings):
    user = make_user(email="target@example.com")
    for _ in range(settings.LOGIN_ATTEMPTS_PER_ACCOUNT):
        assert login(client, user.email).status_code == 401
    refused = login(client, user.email, "password123")  # even the right password, now
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "TOO_MANY_LOGIN_ATTEMPTS"
    assert 1 <= int(refused.headers["Retry-After"]) <= settings.LOGIN_WINDOW
    # The same address may still log in to another account.
    make_user(email="bystander@example.com")
    assert login(client, "BYSTANDER@example.com", "password123").status_code == 200
    # Case does not make a new account.
    assert login(client, "TARGET@EXAMPLE.COM", "password123").status_code == 429


def test_login_attempts_are_limited_per_address(client, settings):
    for n in range(settings.LOGIN_ATTEMPTS_PER_ADDRESS):
        assert login(client, f"nobody{n}@example.com").status_code == 401
    refused = login(client, "someone-new@example.com")
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1


def test_login_window_ends(client, make_user, redis_client):
    user = make_user()
    for _ in range(6):
        login(client, user.email)
    assert login(client, user.email, "password123").status_code == 429
    for key in redis_client.scan_iter("ebs:rate:login:*"):
        redis_client.expire(key, 0)  # as if the minute had passed
    assert login(client, user.email, "password123").status_code == 200


def insert_pending(db, user_id: int, event_id: int, n: int, key: str | None = None) -> list[str]:
    ids = []
    for i in range(n):
        booking_id = f"bk_pending{user_id:06d}{event_id:06d}{i:04d}"
        db.execute(
            text(
                "INSERT INTO bookings (booking_id, user_id, event_id, quantity, idempotency_key,"
                " request_hash) VALUES (:b, :u, :e, 1, :k, :h)"
            ),
            {
                "b": booking_id,
                "u": user_id,
                "e": event_id,
                "k": key if i == 0 else None,
                "h": hashlib.sha256(f"{event_id}:1".encode()).hexdigest(),
            },
        )
        ids.append(booking_id)
    db.commit()
    return ids


def test_booking_requests_in_flight_are_capped_per_user(
    client, make_user, make_event, auth, db, settings
):
    # Rows nobody signalled stay pending whether or not a worker runs, so this is exact.
    user = make_user()
    quiet, other = make_event(), make_event()
    mine = insert_pending(db, user.id, quiet.id, settings.MAX_PENDING_PER_USER, key="retry-me")
    refused = client.post("/api/bookings", json={"eventId": other.id}, headers=auth(user))
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "TOO_MANY_PENDING"
    assert int(refused.headers["Retry-After"]) >= 1
    # A retry of a request already stored still gets that booking back.
    retry = client.post(
        "/api/bookings",
        json={"eventId": quiet.id},
        headers=auth(user) | {"Idempotency-Key": "retry-me"},
    )
    assert retry.status_code == 202
    assert retry.json()["data"]["bookingId"] == mine[0]
    # Other users are not affected.
    assert (
        client.post(
            "/api/bookings", json={"eventId": other.id}, headers=auth(make_user())
        ).status_code
        == 202
    )
    # Once one is decided, the user may ask again.
    db.execute(
        text("UPDATE bookings SET status = 'rejected', reason = 'sold_out' WHERE booking_id = :b"),
        {"b": mine[1]},
    )
    db.commit()
    assert (
        client.post("/api/bookings", json={"eventId": other.id}, headers=auth(user)).status_code
        == 202
    )
    total = db.execute(text("SELECT count(*) FROM bookings WHERE user_id = :u"), {"u": user.id})
    assert total.scalar_one() == settings.MAX_PENDING_PER_USER + 1


# ---------------------------------------------------------------- bytes PostgreSQL cannot store


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/events?q=a%00b", None),  # found by schemathesis: it was a 500
        ("GET", "/api/bookings/bk_%00", None),
        ("DELETE", "/api/bookings/bk_%00", None),
        (
            "POST",
            "/api/auth/register",
            {"email": "nul@example.com", "name": "a\0b", "password": "password1"},
        ),
        (
            "POST",
            "/api/events",
            {"name": "\0", "eventDate": "2999-01-01T00:00:00Z", "seatCapacity": 1},
        ),
    ],
)
def test_nul_characters_are_400_never_500(client, make_user, auth, method, path, body):
    response = client.request(method, path, json=body, headers=auth(make_user("admin")))
    assert response.status_code in (400, 404), response.text
    assert response.json()["success"] is False
