"""The envelope on every kind of failure, health, migrations and the CLI."""

from __future__ import annotations

import math
import subprocess

from fastapi.testclient import TestClient
from sqlalchemy import text

from devstack import BIN, ROOT, alembic_config, recreate_database
from tests.conftest import process_env


def test_unknown_route_and_method_use_the_envelope(client):
    response = client.get("/api/nope")
    assert response.status_code == 404
    assert response.json() == {
        "success": False,
        "error": {"code": "NOT_FOUND", "message": "Not Found", "details": []},
    }
    response = client.patch("/api/events")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


def test_malformed_json_is_a_validation_error(client, make_user, auth):
    response = client.post(
        "/api/auth/login", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"


def test_bodies_over_64_kib_are_refused(client):
    big = b'{"name": "' + b"x" * (65 * 1024) + b'"}'
    response = client.post(
        "/api/auth/register", content=big, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"

    def chunks():
        for _ in range(70):
            yield b"x" * 1024

    response = client.post(
        "/api/auth/register", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413


def test_health(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["data"]["services"] == {"postgres": "up", "redis": "up"}
    assert client.get("/").status_code == 200


def test_health_names_what_is_down(engine, settings):
    from api.app import create_app

    broken = settings.model_copy(update={"REDIS_URL": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(broken)) as client:
        response = client.get("/health")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "SERVICE_UNAVAILABLE"
    assert error["details"] == [{"field": "redis", "message": "down"}]
    # Like every 503: when to ask again, here no sooner than a check can take (HEALTH_TIMEOUT).
    assert response.headers["retry-after"] == str(math.ceil(broken.HEALTH_TIMEOUT))


def test_request_id_is_echoed(client):
    assert client.get("/health", headers={"X-Request-ID": "abc"}).headers["x-request-id"] == "abc"
    assert len(client.get("/health").headers["x-request-id"]) == 32


def test_migrations_go_down_to_base_and_up_again(settings):
    from alembic import command
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    url = make_url(settings.sqlalchemy_url)
    # Named after the test database, so test runs against different databases never collide.
    url = url.set(database=f"{url.database}_migrations")
    url_text = url.render_as_string(hide_password=False)
    recreate_database(url_text)
    config = alembic_config(url_text)
    command.upgrade(config, "head")
    command.downgrade(config, "base")
    command.upgrade(config, "head")
    engine = create_engine(url)
    with engine.connect() as conn:
        functions = set(
            conn.scalars(
                text("SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace")
            )
        )
    engine.dispose()
    assert {"process_event_queue", "booking_verdict"} <= functions
    assert not {"cancel_booking", "create_booking"} & functions


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "ebs"), *args], cwd=ROOT, env=process_env(), capture_output=True, text=True
    )


def test_cli_seed_and_check(engine):
    seeded = run_cli("db", "seed", "--if-empty")
    assert seeded.returncode == 0, seeded.stderr
    with engine.connect() as conn:
        counts = conn.execute(
            text(
                "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM events),"
                " (SELECT count(*) FROM bookings),"
                " (SELECT count(*) FROM events WHERE event_date < now())"
            )
        ).one()
    assert tuple(counts) == (4, 6, 5, 1)
    again = run_cli("db", "seed", "--if-empty")
    assert "not seeding" in again.stdout
    assert run_cli("check").returncode == 0
    with engine.begin() as conn:
        # Break the invariant behind the procedures' back: ebs check must notice.
        conn.execute(text("UPDATE events SET available_seats = available_seats - 1 WHERE id = 1"))
    broken = run_cli("check")
    assert broken.returncode == 1
    assert "VIOLATION" in broken.stderr


def test_cli_create_admin_can_log_in(engine, client):
    result = run_cli(
        "users", "create-admin", "--email", "root@example.com", "--name", "Root",
        "--password", "a-long-password",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    response = client.post(
        "/api/auth/login", json={"email": "root@example.com", "password": "a-long-password"}
    )
    assert response.json()["data"]["user"]["role"] == "admin"
