"""X-Forwarded-For: ignored unless the peer is a trusted proxy (FORWARDED_ALLOW_IPS), so a
client rotating it cannot reset the per-address limits (docs/OPERATIONS.md)."""

from __future__ import annotations


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
