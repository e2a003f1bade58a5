from __future__ import annotations

import pytest


def register(client, **overrides):
    body = {"email": "ana@example.com", "name": "Ana", "password": "password123"} | overrides
    return client.post("/api/auth/register", json=body)


def test_register_returns_user_and_working_token(client):
    response = register(client)
    assert response.status_code == 201
    data = response.json()["data"]
    assert data["user"]["email"] == "ana@example.com"
    assert data["user"]["role"] == "user"
    assert "password" not in str(data["user"]).lower()
    me = client.get("/api/auth/me", headers={"Authorization": f"Bearer {data['token']}"})
    assert me.status_code == 200
    assert me.json()["data"]["id"] == data["user"]["id"]


def test_register_cannot_create_an_admin(client):
    response = register(client, role="admin")
    assert response.status_code == 400
    assert response.json()["error"]["details"] == [{"field": "role", "message": "unknown field"}]


def test_email_is_unique_case_insensitively(client):
    assert register(client).status_code == 201
    response = register(client, email="ANA@Example.COM")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "EMAIL_TAKEN"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": "A"}, "name"),
        ({"name": "x" * 256}, "name"),
        # Limits hold for what was sent (the schema's maxLength), not for the trimmed value
        ({"name": "\t" + "x" * 255}, "name"),
        ({"name": " a "}, "name"),  # and the minimum holds again once trimmed
        ({"password": "short"}, "password"),
        ({"password": "é" * 37}, "password"),  # 74 bytes in UTF-8
        ({"email": "not-an-email"}, "email"),
    ],
)
def test_register_validation(client, overrides, field):
    response = register(client, **overrides)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert [d["field"] for d in error["details"]] == [field]


def test_names_are_trimmed_and_passwords_kept_as_typed(client):
    response = register(client, name="  Ana  ", password=" password123 ")
    assert response.status_code == 201
    assert response.json()["data"]["user"]["name"] == "Ana"
    login = {"email": "ana@example.com", "password": "password123"}
    assert client.post("/api/auth/login", json=login).status_code == 401
    login["password"] = " password123 "
    assert client.post("/api/auth/login", json=login).status_code == 200


def test_validation_reports_one_entry_per_field(client):
    response = client.post("/api/auth/register", json={"email": "x", "password": "1"})
    fields = sorted(d["field"] for d in response.json()["error"]["details"])
    assert fields == ["email", "name", "password"]


def test_login(client):
    register(client)
    response = client.post(
        "/api/auth/login", json={"email": "Ana@example.com", "password": "password123"}
    )
    assert response.status_code == 200
    assert response.json()["data"]["user"]["email"] == "ana@example.com"


@pytest.mark.parametrize(
    "body",
    [
        {"email": "ana@example.com", "password": "wrong-password"},
        {"email": "nobody@example.com", "password": "password123"},
    ],
)
def test_login_failures_do_not_say_which_part_was_wrong(client, body):
    register(client)
    response = client.post("/api/auth/login", json=body)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "INVALID_CREDENTIALS"


def test_me_reads_the_user_from_the_database(client, make_user, auth, db):
    from common.users.models import User

    user = make_user()
    headers = auth(user)
    db.get(User, user.id).name = "Renamed"
    db.commit()
    assert client.get("/api/auth/me", headers=headers).json()["data"]["name"] == "Renamed"
    db.delete(db.get(User, user.id))
    db.commit()
    response = client.get("/api/auth/me", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "INVALID_TOKEN"


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer not.a.jwt", "Basic abc"])
def test_me_requires_a_valid_token(client, header):
    headers = {"Authorization": header} if header else {}
    response = client.get("/api/auth/me", headers=headers)
    assert response.status_code == 401
    assert response.json()["success"] is False


def test_production_refuses_default_or_short_secret():
    from pydantic import ValidationError

    from common.settings import DEFAULT_JWT_SECRET, Settings

    for secret in (DEFAULT_JWT_SECRET, "too-short"):
        with pytest.raises(ValidationError, match="JWT_SECRET"):
            Settings(APP_ENV="production", JWT_SECRET=secret, BCRYPT_ROUNDS=12)
    with pytest.raises(ValidationError, match="BCRYPT_ROUNDS"):
        Settings(APP_ENV="production", JWT_SECRET="x" * 32, BCRYPT_ROUNDS=4)
    assert Settings(APP_ENV="production", JWT_SECRET="x" * 32, BCRYPT_ROUNDS=12)


@pytest.mark.parametrize(
    "claims", [{"sub": str(2**31)}, {"sub": "9" * 5000}, {"exp": 253_402_300_800}]
)
def test_a_signed_token_outside_the_claim_policy_is_a_401_on_every_path(
    client, engine, settings, make_user, make_event, claims
):
    """Signed with our key, but naming a user id no user can have, or expiring after year
    9999: a 401, on the lean path and the full stack alike, and a 1008 on the WebSocket."""
    import time

    import jwt
    from fastapi.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    from api.app import create_app

    now = int(time.time())
    token = jwt.encode(
        {"sub": str(make_user().id), "role": "user", "iat": now, "nbf": now, "exp": now + 600}
        | claims,
        settings.JWT_SECRET.get_secret_value(),
        algorithm="HS256",
    )
    headers = {"Authorization": f"Bearer {token}"}
    event = make_event()
    with TestClient(create_app(settings.model_copy(update={"LEAN_PATH": False}))) as full:
        for app in (client, full):
            for response in (
                app.post("/api/bookings", json={"eventId": event.id}, headers=headers),
                app.get("/api/bookings/bk_unknown", headers=headers),
                app.get("/api/auth/me", headers=headers),
            ):
                assert response.status_code == 401, response.text
                assert response.json()["error"]["code"] == "INVALID_TOKEN"
    with (
        pytest.raises(WebSocketDisconnect) as closed,
        client.websocket_connect(f"/ws?token={token}") as ws,
    ):
        ws.receive_json()
    assert closed.value.code == 1008
