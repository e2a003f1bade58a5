"""Passwords under load: bcrypt's cost is the same for an unknown email as for a wrong
password, it runs with no database connection held and a bounded number at a time, and
sign-ups are limited per client address (docs/RELIABILITY.md, "Under outage, overload and attack").
"""

from __future__ import annotations

import contextlib
import threading

import bcrypt
import pytest

from tests.app_support import app_client, in_thread


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
