"""Issue 13, "Hold under outage, overload and attack": each defect a hostile tester found, as a
test against the real services (docs/RELIABILITY.md, "Under outage, overload and attack").
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import threading

import bcrypt
import pytest
from sqlalchemy import text
from starlette.websockets import WebSocketDisconnect

from api.app import create_app
from api.middleware import request_id_var
from common.logs import configure_logging


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


def test_an_unexpected_error_still_carries_the_request_id(settings, engine):
    """A bug (any exception no handler knows) is a 500 in the envelope that still names its
    request: the X-Request-ID header, and the request id on the logged traceback."""
    from fastapi.testclient import TestClient

    app = create_app(settings)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    stream = io.StringIO()
    handler = configure_logging(
        "WARNING", service="api", context={"request_id": request_id_var.get}, stream=stream
    )
    try:
        with TestClient(app, raise_server_exceptions=False) as test_client:
            response = test_client.get("/boom", headers={"X-Request-ID": "trace-the-bug"})
    finally:
        logging.getLogger().removeHandler(handler)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "INTERNAL_ERROR"
    assert response.headers.get("x-request-id") == "trace-the-bug"
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    failures = [line for line in lines if "RuntimeError: a bug" in line.get("exc_info", "")]
    assert failures and all(line.get("request_id") == "trace-the-bug" for line in failures)


# ---------------------------------------------------------------- login and sign-up under load


def app_client(settings, **overrides):
    from fastapi.testclient import TestClient

    return TestClient(create_app(settings.model_copy(update=overrides)))


@pytest.fixture
def bcrypt_calls(monkeypatch):
    """Every bcrypt check the app makes, with the cost of the hash it compared against (a spy
    on the library; the real bcrypt still runs)."""
    calls: list[int] = []
    real = bcrypt.checkpw

    def spy(password: bytes, hashed: bytes) -> bool:
        calls.append(int(hashed.split(b"$")[2]))
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", spy)
    return calls


def test_an_unknown_email_costs_the_same_bcrypt_work_as_a_wrong_password(
    settings, engine, bcrypt_calls
):
    """The dummy hash an unknown email is checked against has the configured cost, so the two
    failures take the same time (docs/API.md); it was built with 4 rounds whatever the setting."""
    with app_client(settings, BCRYPT_ROUNDS=6) as client:
        body = {"email": "known@example.com", "name": "Known", "password": "password123"}
        assert client.post("/api/auth/register", json=body).status_code == 201
        wrong = client.post(
            "/api/auth/login", json={"email": body["email"], "password": "wrong-password"}
        )
        unknown = client.post(
            "/api/auth/login", json={"email": "nobody@example.com", "password": "password123"}
        )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert bcrypt_calls == [6, 6]


class Gate:
    """Holds every call of a bcrypt function until released, and counts who is inside."""

    def __init__(self, monkeypatch, name: str, meet: int = 0) -> None:
        self.inside = threading.Semaphore(0)
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.now = self.most = 0
        self.barrier = threading.Barrier(meet) if meet else None
        real = getattr(bcrypt, name)

        def gated(*args):
            with self.lock:
                self.now += 1
                self.most = max(self.most, self.now)
            self.inside.release()
            try:
                if self.barrier is not None:
                    # Wait (boundedly) for a second caller: it can only come if hashing is
                    # not bounded to one at a time. The wait is a hang guard, not a check.
                    with contextlib.suppress(threading.BrokenBarrierError):
                        self.barrier.wait(timeout=3)
                self.release.wait(60)
                return real(*args)
            finally:
                with self.lock:
                    self.now -= 1

        monkeypatch.setattr(bcrypt, name, gated)


def in_thread(call) -> tuple[threading.Thread, list]:
    answers: list = []
    thread = threading.Thread(target=lambda: answers.append(call()))
    thread.start()
    return thread, answers


@pytest.mark.parametrize(
    ("path", "gated", "body"),
    [
        ("/api/auth/login", "checkpw", {"email": "held@example.com", "password": "password123"}),
        (
            "/api/auth/register",
            "hashpw",
            {"email": "new@example.com", "name": "New", "password": "password123"},
        ),
    ],
)
def test_bcrypt_holds_no_database_connection(
    settings, engine, make_user, make_event, auth, monkeypatch, path, gated, body
):
    """With a one-connection pool, a booking goes through while a login or sign-up is inside
    bcrypt: the password is hashed or checked with no connection (and no transaction) held.
    Before, bcrypt ran inside the request's transaction and the booking waited for the pool."""
    make_user(email="held@example.com")
    event = make_event()
    headers = auth(make_user())
    gate = Gate(monkeypatch, gated)
    with app_client(settings, DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0) as client:
        thread, answers = in_thread(lambda: client.post(path, json=body))
        try:
            assert gate.inside.acquire(timeout=30)
            booking = client.post("/api/bookings", json={"eventId": event.id}, headers=headers)
        finally:
            gate.release.set()
            thread.join(60)
    assert booking.status_code == 202, booking.text
    assert answers and answers[0].status_code in (200, 201), answers[0].text


def test_concurrent_bcrypt_is_bounded(settings, engine, make_user, monkeypatch):
    """BCRYPT_CONCURRENCY=1: two logins at once run bcrypt one after the other (a flood of
    logins waits for a hashing slot without a thread, instead of taking every one)."""
    make_user(email="a@example.com")
    make_user(email="b@example.com")
    gate = Gate(monkeypatch, "checkpw", meet=2)
    gate.release.set()
    with app_client(settings, BCRYPT_CONCURRENCY=1) as client:
        logins = [
            in_thread(
                lambda email=email: client.post(
                    "/api/auth/login", json={"email": email, "password": "password123"}
                )
            )
            for email in ("a@example.com", "b@example.com")
        ]
        for thread, _ in logins:
            thread.join(60)
    assert [answers[0].status_code for _, answers in logins] == [200, 200]
    assert gate.most == 1


def test_sign_ups_are_limited_per_address(settings, engine):
    """A flood of sign-ups from one address is refused past the limit: 429 in the envelope,
    with Retry-After, before any bcrypt work (it had no limit at all)."""
    with app_client(settings, SIGNUP_ATTEMPTS_PER_ADDRESS=3) as client:
        answers = [
            client.post(
                "/api/auth/register",
                json={"email": f"flood{n}@example.com", "name": "Flood", "password": "password123"},
            )
            for n in range(4)
        ]
    assert [a.status_code for a in answers] == [201, 201, 201, 429]
    refused = answers[-1]
    assert refused.json()["error"]["code"] == "TOO_MANY_SIGNUPS"
    assert 0 < int(refused.headers["Retry-After"]) <= settings.SIGNUP_WINDOW


# ---------------------------------------------------------------- input at the edges


@pytest.mark.parametrize("method", ["post", "put"])
def test_a_date_past_year_9999_in_utc_is_400(client, make_user, make_event, auth, method):
    """`9999-12-31T23:59:59-14:00` is year 10000 once in UTC, which Python's datetime cannot
    hold: a 400 naming the field, not a 500."""
    admin = auth(make_user(role="admin"))
    date = "9999-12-31T23:59:59-14:00"
    if method == "post":
        body = {"name": "Far", "eventDate": date, "seatCapacity": 10}
        response = client.post("/api/events", json=body, headers=admin)
    else:
        response = client.put(
            f"/api/events/{make_event().id}", json={"eventDate": date}, headers=admin
        )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert [d["field"] for d in error["details"]] == ["eventDate"]


# ---------------------------------------------------------------- what the logs may hold


def test_a_token_in_the_url_never_reaches_the_log(engine, make_user, token_for):
    """A real uvicorn at --log-level info (as `make run` serves it) logs the WebSocket it
    accepted and each request, path and query included, but a `token=` in the URL is redacted."""
    import asyncio

    import httpx
    from websockets.asyncio.client import connect

    from devstack import BIN, free_port, wait_until
    from tests.conftest import ManagedProcess, process_env

    port = free_port()
    url = f"127.0.0.1:{port}"
    api = ManagedProcess("redact-api")
    argv = [str(BIN / "uvicorn"), "api.main:app", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "info"]  # fmt: skip
    api.spawn(argv, process_env(LOG_LEVEL="INFO"))
    try:

        def up() -> bool:
            try:
                return httpx.get(f"http://{url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 60, "the api")
        token = token_for(make_user())

        async def open_socket() -> None:
            async with connect(f"ws://{url}/ws?token={token}", open_timeout=30) as conn:
                await asyncio.wait_for(conn.recv(), 30)

        asyncio.run(open_socket())
        assert httpx.get(f"http://{url}/api/auth/me?token={token}&x=1", timeout=10).status_code
        logged = ('"WebSocket /ws?token=', "/api/auth/me?token=")
        wait_until(lambda: all(s in api.log.read_text() for s in logged), 30, "both lines")
        log = api.log.read_text()
    finally:
        api.stop()
    assert token not in log
    assert "token=[redacted]" in log


# ---------------------------------------------------------------- hosts, origins, pages


def test_a_host_not_allowed_is_refused_and_never_reflected(client):
    """A redirect used to name whatever Host the client sent (`Host: evil.example` ->
    `Location: http://evil.example/...`). Hosts outside ALLOWED_HOSTS are 400 in the envelope."""
    evil = client.get("/api/events/", headers={"Host": "evil.example"}, follow_redirects=False)
    assert evil.status_code == 400, evil.headers
    assert evil.json()["error"]["code"] == "INVALID_HOST"
    assert "location" not in evil.headers
    ours = client.get("/api/events/", headers={"Host": "testserver"}, follow_redirects=False)
    assert ours.status_code == 307
    assert ours.headers["location"].startswith("http://testserver/")
    with pytest.raises(WebSocketDisconnect):
        with client.websocket_connect("/ws", headers={"Host": "evil.example"}) as ws:
            ws.receive_json()


def test_a_refused_cors_preflight_is_the_error_envelope(client, settings):
    preflight = {"Access-Control-Request-Method": "POST"}
    refused = client.options(
        "/api/bookings", headers=preflight | {"Origin": "https://evil.example"}
    )
    assert refused.status_code == 400
    assert refused.headers["content-type"] == "application/json"
    assert refused.json()["error"]["code"] == "CORS_REFUSED"
    assert "access-control-allow-origin" not in refused.headers
    allowed = client.options(
        "/api/bookings", headers=preflight | {"Origin": settings.CORS_ORIGINS[0]}
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == settings.CORS_ORIGINS[0]


# ---------------------------------------------------------------- behind a proxy, or not


def login_statuses(api, forwarded_for: list[str]) -> list[int]:
    import httpx

    return [
        httpx.post(
            f"{api.url}/api/auth/login",
            json={"email": f"nobody{n}@example.com", "password": "password123"},
            headers={"X-Forwarded-For": address},
            timeout=30,
        ).status_code
        for n, address in enumerate(forwarded_for)
    ]


def test_x_forwarded_for_is_not_trusted_by_default(engine):
    """uvicorn trusted X-Forwarded-For from loopback, so a client rotating that header got a
    fresh per-address login budget each time. With no FORWARDED_ALLOW_IPS (the default) the
    header is ignored and the limit holds."""
    from tests.conftest import ApiProcess

    api = ApiProcess("xff-api", LOGIN_ATTEMPTS_PER_ADDRESS="3").start()
    try:
        statuses = login_statuses(api, [f"203.0.113.{n}" for n in range(4)])
    finally:
        api.stop()
    assert statuses == [401, 401, 401, 429]


def test_x_forwarded_for_is_read_from_a_trusted_proxy(engine, redis_client):
    """The proxy setup (docs/OPERATIONS.md): with the proxy's address in FORWARDED_ALLOW_IPS,
    the client address it passes on is the one counted."""
    from tests.conftest import ApiProcess

    api = ApiProcess(
        "xff-proxy-api", LOGIN_ATTEMPTS_PER_ADDRESS="3", FORWARDED_ALLOW_IPS="127.0.0.1"
    )
    api.start()
    try:
        rotating = login_statuses(api, [f"203.0.113.{n}" for n in range(4)])
        one_client = login_statuses(api, ["198.51.100.7"] * 4)
    finally:
        api.stop()
    assert rotating == [401, 401, 401, 401]
    assert one_client == [401, 401, 401, 429]


# ---------------------------------------------------------------- outages answer, they do not hang


def test_a_request_that_finds_the_pool_empty_is_503(settings, engine, make_user, make_event, auth):
    """Every connection of the pool busy past DB_POOL_TIMEOUT: 503 with Retry-After in the
    envelope (it was a 500), and nothing written."""
    event = make_event()
    headers = auth(make_user())
    with app_client(settings, DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, DB_POOL_TIMEOUT=0.2) as client:
        with client.app.state.engine.connect():  # the pool's only connection
            response = client.post("/api/bookings", json={"eventId": event.id}, headers=headers)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert int(response.headers["Retry-After"]) > 0
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM bookings")) == 0


def test_a_lock_held_past_the_lock_timeout_is_503(settings, engine, make_user, make_event, auth):
    """A booking whose event row is locked (a stuck batch, a migration) waits DB_LOCK_TIMEOUT,
    then is 503 with Retry-After, and nothing of it is written. Before, it waited for as long
    as the lock was held, holding a connection and a thread."""
    event = make_event()
    headers = auth(make_user())
    with app_client(settings, DB_LOCK_TIMEOUT=0.2) as client, engine.connect() as locker:
        locker.execute(text("SELECT 1 FROM events WHERE id = :id FOR UPDATE"), {"id": event.id})
        thread, answers = in_thread(
            lambda: client.post("/api/bookings", json={"eventId": event.id}, headers=headers)
        )
        thread.join(60)  # a hang guard: without a lock timeout it waits for the lock
        answered_while_locked = answers[0] if answers else None
        locker.rollback()
        thread.join(60)
    assert answered_while_locked is not None, "the booking waited as long as the lock was held"
    assert answered_while_locked.status_code == 503, answered_while_locked.text
    assert int(answered_while_locked.headers["Retry-After"]) > 0
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM bookings")) == 0


def test_the_first_unknown_email_costs_no_more_than_the_next(settings, engine, monkeypatch):
    """The dummy hash is built when the API starts, not by the first login for an unknown
    email (that login would run bcrypt twice, and be told apart by its time)."""
    hashes: list[int] = []
    real = bcrypt.hashpw

    def counting(pw: bytes, salt: bytes) -> bytes:
        hashes.append(1)
        return real(pw, salt)

    monkeypatch.setattr(bcrypt, "hashpw", counting)
    with app_client(settings, BCRYPT_ROUNDS=5) as client:
        hashes.clear()  # whatever the start-up did
        body = {"email": "nobody@example.com", "password": "password123"}
        assert client.post("/api/auth/login", json=body).status_code == 401
    assert hashes == []


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
