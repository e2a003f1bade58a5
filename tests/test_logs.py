"""Structured logs: one JSON object per line, carrying the request id, booking id and worker."""

from __future__ import annotations

import io
import json
import logging

import httpx

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
