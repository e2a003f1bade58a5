"""``/metrics`` in the Prometheus text format (docs/OPERATIONS.md, "Metrics").

Two sources, joined at scrape time:

- this process's own metrics, kept in memory by prometheus_client: requests by method, route
  template and status with their latency, bookings accepted, open WebSockets (plus the
  client's process and GC collectors);
- the fleet's pipeline metrics, which workers keep in Redis (``common.metrics``), and gauges
  read when scraped: broker queue depth, pending bookings and the age of the oldest one.

A request pays only in-memory counter updates; Redis and PostgreSQL are read per scrape.

Access: with ``METRICS_TOKEN`` set, ``Authorization: Bearer <token>`` is required (401
otherwise). Without a token the endpoint answers only to loopback clients, and never in
production (404), so it is not open to the internet by default.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import time
from collections.abc import Iterator
from typing import Any

import redis.asyncio as aioredis
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from sqlalchemy import Engine, text
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import AsyncRedisDep, EngineDep, SettingsDep
from common.errors import NotFound, Unauthorized
from common.metrics import (
    SWEEPER_KEY,
    WEBHOOK_HASH,
    WEBHOOK_OUTCOMES,
    WORKER_HASH,
    parse_snapshot,
)
from common.metrics import Histogram as StoredHistogram
from common.settings import Settings
from common.tasks import BOOKINGS_QUEUE, MAINTENANCE_QUEUE, WEBHOOKS_QUEUE

logger = logging.getLogger(__name__)

# Requests that matched no route share one label, so a scan of random paths cannot blow up
# the number of series.
UNMATCHED = "unmatched"

REQUESTS = Counter(
    "ebs_http_requests",
    "HTTP requests by method, route template and status code.",
    ["method", "route", "status"],
)
REQUEST_SECONDS = Histogram(
    "ebs_http_request_duration_seconds",
    "HTTP request latency by method and route template, until the response is sent.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BOOKINGS_ACCEPTED = Counter(
    "ebs_bookings_accepted",
    "Booking requests accepted by this API instance (stored as pending, answered 202).",
)
WEBSOCKETS_OPEN = Gauge("ebs_websockets_open", "WebSocket connections open on this instance.")


# ---------------------------------------------------------------- called by other modules


def record_accepted() -> None:
    BOOKINGS_ACCEPTED.inc()


def websocket_opened() -> None:
    WEBSOCKETS_OPEN.inc()


def websocket_closed() -> None:
    WEBSOCKETS_OPEN.dec()


@contextlib.contextmanager
def track_websocket() -> Iterator[None]:
    """``with track_websocket(): ...`` around a socket's lifetime keeps the gauge right."""
    websocket_opened()
    try:
        yield
    finally:
        websocket_closed()


# ---------------------------------------------------------------- request metrics

_series: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count and time one answered request: the middleware below and the lean path both."""
    key = (method, route, status)
    series = _series.get(key)
    if series is None:  # looked up once per series: labels() costs a lock and a dict
        series = _series[key] = (
            REQUESTS.labels(method, route, str(status)),
            REQUEST_SECONDS.labels(method, route),
        )
    series[0].inc()
    series[1].observe(seconds)


class MetricsMiddleware:
    """Counts and times every HTTP request under its route template (``/api/events/{event_id}``),
    never the raw path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            observe_request(scope["method"], route, status, time.perf_counter() - start)


# ---------------------------------------------------------------- access


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_access(request: Request, settings: Settings) -> None:
    token = settings.METRICS_TOKEN.get_secret_value() if settings.METRICS_TOKEN else ""
    if token:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            raise Unauthorized("A valid metrics token is required")
        return
    client = request.client.host if request.client else None
    if settings.APP_ENV != "production" and _is_loopback(client):
        return
    raise NotFound()


# ---------------------------------------------------------------- scrape-time metrics


class _Families:
    """Anything with ``collect()`` can be rendered by ``generate_latest``."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def _histogram_family(name: str, doc: str, stored: StoredHistogram) -> HistogramMetricFamily:
    buckets = stored.cumulative()
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=stored.total)


async def _redis_families(aredis: aioredis.Redis) -> list[Metric]:
    pipe = aredis.pipeline(transaction=False)
    pipe.hgetall(WORKER_HASH)
    pipe.get(SWEEPER_KEY)
    pipe.llen(BOOKINGS_QUEUE)
    pipe.llen(MAINTENANCE_QUEUE)
    pipe.llen(WEBHOOKS_QUEUE)
    pipe.hgetall(WEBHOOK_HASH)
    raw, sweeper, bookings_depth, maintenance_depth, webhooks_depth, hooks = await pipe.execute()
    snap = parse_snapshot(raw, sweeper)

    decided = CounterMetricFamily(
        "ebs_bookings_decided",
        "Booking requests decided by the workers, by outcome (all workers, from Redis).",
        labels=["outcome"],
    )
    for name, count in snap.decided.items():
        decided.add_metric([name], count)
    resignalled = CounterMetricFamily(
        "ebs_sweeper_resignalled",
        "Events the sweeper re-signalled because a request waited too long (lost signal).",
        value=snap.sweeper_resignalled,
    )
    depth = GaugeMetricFamily(
        "ebs_queue_depth", "Tasks waiting in the broker queue.", labels=["queue"]
    )
    depth.add_metric([BOOKINGS_QUEUE], bookings_depth)
    depth.add_metric([MAINTENANCE_QUEUE], maintenance_depth)
    depth.add_metric([WEBHOOKS_QUEUE], webhooks_depth)
    deliveries = CounterMetricFamily(
        "ebs_webhook_deliveries",
        "Webhook messages a receiver took (2xx), all workers.",
        value=int(hooks.get("delivered", 0)),
    )
    failures = CounterMetricFamily(
        "ebs_webhook_failures",
        "Failed webhook attempts: retry (timeout, 408, 429, 5xx), failed (other 4xx), gone (410).",
        labels=["kind"],
    )
    for kind in WEBHOOK_OUTCOMES[1:]:
        failures.add_metric([kind], int(hooks.get(kind, 0)))
    return [
        deliveries,
        failures,
        decided,
        _histogram_family(
            "ebs_booking_decision_latency_seconds",
            "Seconds from a booking's acceptance to its decision (confirmed or rejected).",
            snap.latency,
        ),
        _histogram_family(
            "ebs_decision_batch_size",
            "Requests decided per batch (one transaction of process_event_queue).",
            snap.batch,
        ),
        resignalled,
        depth,
    ]


def _postgres_families(engine: Engine) -> list[Metric]:
    with engine.connect() as conn:
        count, age = conn.execute(
            text(
                "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)"
                " FROM bookings WHERE status = 'pending'"
            )
        ).one()
        disabled, queue_age = conn.execute(
            text(
                "SELECT (SELECT count(*) FROM webhook_endpoints WHERE NOT enabled),"
                " coalesce((SELECT extract(epoch FROM now() - min(h.created_at))"
                "  FROM webhook_endpoints e CROSS JOIN LATERAL (SELECT m.created_at"
                "   FROM webhook_messages m WHERE m.endpoint_id = e.id AND m.state = 'pending'"
                "   ORDER BY m.id LIMIT 1) h WHERE e.enabled), 0)"
            )
        ).one()
    return [
        GaugeMetricFamily(
            "ebs_webhook_endpoints_disabled",
            "Webhook endpoints disabled (by their owner, a 410, or a run of failures).",
            value=disabled,
        ),
        GaugeMetricFamily(
            "ebs_webhook_queue_age_seconds",
            "Age of the oldest undelivered message of an enabled endpoint (0 when none).",
            value=float(queue_age),
        ),
        GaugeMetricFamily(
            "ebs_bookings_pending", "Booking requests stored but not yet decided.", value=count
        ),
        GaugeMetricFamily(
            "ebs_bookings_oldest_pending_age_seconds",
            "Age of the oldest undecided booking request (0 when none).",
            value=float(age),
        ),
    ]


async def scrape_families(aredis: aioredis.Redis, engine: Engine) -> list[Metric]:
    families: list[Metric] = []
    up = GaugeMetricFamily(
        "ebs_metrics_source_up",
        "1 if the source answered during this scrape, else 0.",
        labels=["source"],
    )
    sources: list[tuple[str, Any]] = [
        ("redis", _redis_families(aredis)),
        ("postgres", run_in_threadpool(_postgres_families, engine)),
    ]
    for name, pending in sources:
        try:
            families.extend(await pending)
            up.add_metric([name], 1)
        except Exception as exc:  # a scrape reports what it can rather than failing whole
            logger.warning("metrics source %s unavailable: %s", name, exc)
            up.add_metric([name], 0)
    families.append(up)
    return families


router = APIRouter(tags=["operations"])


@router.get("/metrics", include_in_schema=False)
async def metrics(
    request: Request, settings: SettingsDep, aredis: AsyncRedisDep, engine: EngineDep
) -> Response:
    check_access(request, settings)
    families = await scrape_families(aredis, engine)
    body = generate_latest(REGISTRY) + generate_latest(_Families(families))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
