"""The Host header and CORS: a host outside ALLOWED_HOSTS is refused and never reflected, and a
refused preflight is the error envelope."""

from __future__ import annotations

import pytest
from starlette.websockets import WebSocketDisconnect


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
