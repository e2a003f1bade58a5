"""``/metrics``: who may read it, and that what it reports matches what happened, including
counts kept by a real worker process in Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from common.bookings.schemas import Decision, Status
from common.metrics import LATENCY_BUCKETS, SWEEPER_KEY, record_decided_batch
from common.settings import Settings
from devstack import wait_until
from tests.conftest import RUN_DIR, ApiProcess
from tests.ws_support import LiveClient

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def loopback(engine: Any, settings: Settings) -> Iterator[TestClient]:
    """The app as seen by a client on 127.0.0.1, with no METRICS_TOKEN."""
    from api.app import create_app

    app = create_app(settings.model_copy(update={"METRICS_TOKEN": None}))
    with TestClient(app, client=("127.0.0.1", 50000)) as test_client:
        yield test_client


def scrape(client: TestClient, **headers: str) -> Samples:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def test_without_a_token_only_loopback_may_read(loopback, client):
    assert loopback.get("/metrics").status_code == 200
    # The ``client`` fixture connects as "testclient", not a loopback address.
    response = client.get("/metrics")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"


def test_production_without_a_token_hides_metrics_even_from_loopback(engine, settings):
    from api.app import create_app

    prod = settings.model_copy(update={"APP_ENV": "production", "METRICS_TOKEN": None})
    with TestClient(create_app(prod), client=("127.0.0.1", 50000)) as test_client:
        assert test_client.get("/metrics").status_code == 404


def test_a_token_is_required_when_configured(engine, settings):
    from api.app import create_app

    app = create_app(settings.model_copy(update={"METRICS_TOKEN": SecretStr("s3cret-token")}))
    with TestClient(app, client=("127.0.0.1", 50000)) as test_client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
            response = test_client.get("/metrics", headers=headers)
            assert response.status_code == 401, headers
            assert response.json()["error"]["code"] == "UNAUTHORIZED"
        scrape(test_client, Authorization="Bearer s3cret-token")


def test_requests_are_counted_by_route_template_not_raw_path(loopback):
    before = scrape(loopback)
    assert loopback.get("/api/events/987654").status_code == 404
    assert loopback.get("/no/such/path/123").status_code == 404
    after = scrape(loopback)

    key = {"method": "GET", "route": "/api/events/{event_id}", "status": "404"}
    assert value(after, "ebs_http_requests_total", **key) == (
        value(before, "ebs_http_requests_total", **key) + 1
    )
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert value(after, "ebs_http_requests_total", **unmatched) >= 1
    routes = {dict(labels).get("route") for name, labels in after if name.startswith("ebs_http")}
    assert not any("987654" in r or "/no/such" in r for r in routes if r)
    timing = {"method": "GET", "route": "/api/events/{event_id}"}
    assert value(after, "ebs_http_request_duration_seconds_count", **timing) >= 1


def test_open_websockets_gauge_counts_real_sockets(engine, make_user, token_for):
    """A socket opened on a real uvicorn shows at its /metrics, and is gone once it closes."""
    token = token_for(make_user())
    proc = ApiProcess("api-metrics-ws").start()

    def open_sockets() -> float:
        response = httpx.get(f"{proc.url}/metrics", timeout=10)
        assert response.status_code == 200, response.text
        return value(parse(response.text), "ebs_websockets_open")

    async def scenario() -> None:
        assert open_sockets() == 0
        first = await LiveClient.open(f"{proc.ws_url}/ws", token)
        second = await LiveClient.open(f"{proc.ws_url}/ws", token)
        for client in (first, second):
            await client.first("connection_established")
        assert open_sockets() == 2
        await first.close()
        wait_until(lambda: open_sockets() == 1, 30, "one socket counted")
        await second.close()
        wait_until(lambda: open_sockets() == 0, 30, "no socket counted")

    try:
        asyncio.run(scenario())
    finally:
        proc.stop()


def test_pipeline_counts_from_a_real_worker_reach_the_api(
    loopback, worker, make_user, make_event, auth, redis_client
):
    """Three requests, the last over its user's limit of one seat: the worker's outcomes,
    latencies and batch sizes are reported by the API process, which decided nothing itself.
    (A sold-out request may be refused at intake, so the rejection here is the limit's.)"""
    event = make_event(capacity=3, max_per_user=1)
    accepted_before = value(scrape(loopback), "ebs_bookings_accepted_total")
    booking_ids = []
    first, second = make_user(), make_user()
    for user in (first, second, first):
        response = loopback.post("/api/bookings", json={"eventId": event.id}, headers=auth(user))
        assert response.status_code == 202, response.text
        booking_ids.append(response.json()["data"]["bookingId"])

    def decided() -> Samples | None:
        samples = scrape(loopback)
        total = sum(value(samples, "ebs_bookings_decided_total", outcome=o) for o in
                    ("confirmed", "limit_exceeded"))  # fmt: skip
        return samples if total == 3 else None

    samples = wait_until(decided, 60, "three decisions counted")
    assert value(samples, "ebs_bookings_accepted_total") == accepted_before + 3
    assert value(samples, "ebs_bookings_decided_total", outcome="confirmed") == 2
    assert value(samples, "ebs_bookings_decided_total", outcome="limit_exceeded") == 1
    assert value(samples, "ebs_booking_decision_latency_seconds_count") == 3
    assert value(samples, "ebs_booking_decision_latency_seconds_bucket", le="+Inf") == 3
    longest = float(LATENCY_BUCKETS[-1])
    assert value(samples, "ebs_booking_decision_latency_seconds_bucket", le=str(longest)) == 3
    assert value(samples, "ebs_decision_batch_size_sum") == 3
    assert value(samples, "ebs_decision_batch_size_count") >= 1
    assert value(samples, "ebs_bookings_pending") == 0
    assert ("ebs_queue_depth", frozenset({("queue", "bookings")})) in samples
    assert value(samples, "ebs_metrics_source_up", source="redis") == 1
    assert value(samples, "ebs_metrics_source_up", source="postgres") == 1

    # The worker's JSON log line for this event names the worker and the task.
    def decided_line() -> dict[str, Any] | None:
        for line in (RUN_DIR / "worker.log").read_text().splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry["message"].startswith(f"decided event={event.id} "):
                    return entry
        return None

    entry = wait_until(decided_line, 30, "the worker's log line")
    assert entry["service"] == "worker"
    assert entry["worker"] and entry["task"] == "bookings.process_event" and entry["task_id"]


def test_sweeper_resignals_and_pending_bookings_are_reported(loopback, redis_client):
    redis_client.set(SWEEPER_KEY, 4)
    samples = scrape(loopback)
    assert value(samples, "ebs_sweeper_resignalled_total") == 4


def test_waitlisted_and_promoted_are_outcomes_of_their_own(loopback, redis_client):
    """A request waitlisted, later promoted: counted once as each, not as a second confirmation."""
    now = datetime.now(UTC)

    def decision(status: Status, promoted: bool = False) -> Decision:
        return Decision(
            booking_id="bk_x", user_id=1, event_id=1, quantity=1, status=status, reason=None,
            seats_left=0, available_seats=0, seat_capacity=1, version=1, created_at=now,
            decided_at=None if status == "waitlisted" else now, queue_seq=1,
            queue_position=1 if status == "waitlisted" else None, promoted=promoted,
            line_through=0, line_gone=[], line_waiting=0, waitlist_length=0,
        )  # fmt: skip

    record_decided_batch(redis_client, [decision("waitlisted"), decision("waitlisted")])
    record_decided_batch(redis_client, [decision("confirmed", promoted=True)])
    samples = scrape(loopback)
    assert value(samples, "ebs_bookings_decided_total", outcome="waitlisted") == 2
    assert value(samples, "ebs_bookings_decided_total", outcome="promoted") == 1
    assert value(samples, "ebs_bookings_decided_total", outcome="confirmed") == 0
    # A promotion waited for seats, not for a worker: no decision latency.
    assert value(samples, "ebs_booking_decision_latency_seconds_count") == 0
