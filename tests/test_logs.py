"""Structured logs: one JSON object per line, carrying the request id, booking id and worker."""

from __future__ import annotations

import io
import json
import logging

import httpx

from api.app import create_app
from api.middleware import request_id_var
from common.logs import configure_logging
from devstack import wait_until
from tests.conftest import ApiProcess


def test_lines_are_json_with_context_and_extras():
    stream = io.StringIO()
    handler = configure_logging("INFO", service="api", context={"request_id": lambda: "r-1"},
                                stream=stream)  # fmt: skip
    try:
        log = logging.getLogger("ebs.test")
        log.debug("not at INFO")
        log.info("booking %s", "accepted", extra={"booking_id": "bk_1"})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["booking accepted", "failed"]
    first = lines[0]
    assert first["level"] == "INFO" and first["service"] == "api" and first["logger"] == "ebs.test"
    assert first["request_id"] == "r-1" and first["booking_id"] == "bk_1"
    assert "ValueError: boom" in lines[1]["exc_info"]


def test_the_api_logs_json_with_request_and_booking_ids(engine, make_user, make_event, auth):
    """A real uvicorn process at LOG_LEVEL=DEBUG: the line for an accepted booking names the
    booking and the request it came from."""
    api = ApiProcess("logs-api", LOG_LEVEL="DEBUG").start()
    try:
        event = make_event()
        response = httpx.post(
            f"{api.url}/api/bookings",
            json={"eventId": event.id},
            headers=auth(make_user()) | {"X-Request-ID": "trace-me-42"},
            timeout=10,
        )
        assert response.status_code == 202, response.text
        booking_id = response.json()["data"]["bookingId"]

        def accepted_line():
            for line in api.log.read_text().splitlines():
                entry = json.loads(line)  # every line is JSON
                if entry["message"] == "booking accepted":
                    return entry
            return None

        entry = wait_until(accepted_line, 20, "the booking accepted line")
        assert entry["booking_id"] == booking_id
        assert entry["request_id"] == "trace-me-42"
        assert entry["service"] == "api" and entry["level"] == "DEBUG"
    finally:
        api.stop()


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
