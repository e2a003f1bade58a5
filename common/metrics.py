"""Pipeline metrics that cross processes: written by workers into Redis, read by the API's
``/metrics`` at scrape time (docs/OPERATIONS.md, "Metrics").

Why Redis and not prometheus_client's multiprocess mode: workers run on other machines than
the API, and multiprocess mode only aggregates processes that share one directory. Every
worker adds to the same counters with HINCRBY in one pipeline per decided batch (never per
booking), so whichever API instance is scraped reports the totals of the whole fleet.

Layout, one hash ``ebs:metrics:worker``:

- ``decided:<outcome>``: decisions by outcome (confirmed, sold_out, limit_exceeded,
  event_past, capacity_lowered, cancelled);
- ``batch:b:<i>`` / ``batch:sum`` / ``batch:count``: a histogram of batch sizes, one
  (non-cumulative) field per bucket of ``BATCH_BUCKETS`` plus ``+Inf``;
- ``latency:b:<i>`` / ``latency:sum`` / ``latency:count``: accepted -> decided seconds per
  booking, buckets ``LATENCY_BUCKETS``.

The sweeper's re-signals are the string key ``ebs:metrics:sweeper_resignalled``. Webhook
attempts by outcome (delivered, retry, failed, gone) are the hash ``ebs:metrics:webhooks``.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import redis

from common.bookings.schemas import Decision
from common.channels import metric_key

WORKER_HASH = metric_key("worker")
SWEEPER_KEY = metric_key("sweeper_resignalled")
WEBHOOK_HASH = metric_key("webhooks")
WEBHOOK_OUTCOMES = ("delivered", "retry", "failed", "gone")

# A promotion from the waitlist is counted as ``promoted``, not ``confirmed``: the request was
# already counted once, as ``waitlisted``.
OUTCOMES = (
    "confirmed",
    "waitlisted",
    "promoted",
    "sold_out",
    "limit_exceeded",
    "event_past",
    "capacity_lowered",
    "cancelled",
)
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
LATENCY_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300,
)  # fmt: skip


def outcome(decision: Decision) -> str:
    if decision.promoted:
        return "promoted"
    return decision.reason or decision.status


def bucket_index(buckets: Sequence[float], value: float) -> int:
    """Index of the first bucket whose upper bound holds ``value``; len(buckets) is +Inf."""
    return bisect.bisect_left(buckets, value)


def record_batch(
    client: redis.Redis, decisions: Sequence[Decision], latencies: Iterable[float]
) -> None:
    """Add one decided batch to the shared counters: one Redis round trip."""
    if not decisions:
        return
    pipe = client.pipeline(transaction=False)
    for name, count in Counter(outcome(d) for d in decisions).items():
        pipe.hincrby(WORKER_HASH, f"decided:{name}", count)
    size = len(decisions)
    pipe.hincrby(WORKER_HASH, f"batch:b:{bucket_index(BATCH_BUCKETS, size)}", 1)
    pipe.hincrby(WORKER_HASH, "batch:sum", size)
    pipe.hincrby(WORKER_HASH, "batch:count", 1)
    values = list(latencies)
    if values:
        for index, count in Counter(bucket_index(LATENCY_BUCKETS, v) for v in values).items():
            pipe.hincrby(WORKER_HASH, f"latency:b:{index}", count)
        pipe.hincrbyfloat(WORKER_HASH, "latency:sum", sum(values))
        pipe.hincrby(WORKER_HASH, "latency:count", len(values))
    pipe.execute()


def record_decided_batch(client: redis.Redis, decisions: Sequence[Decision]) -> None:
    """What the worker calls after a batch committed: its latencies (acceptance to decision,
    from the times the procedure returns; cancellations are no acceptance decision), then
    count it."""
    latencies = [
        max((d.decided_at - d.created_at).total_seconds(), 0.0)
        for d in decisions
        # A promotion's wait was for seats to come back, not for a worker.
        if d.status in ("confirmed", "rejected") and d.decided_at is not None and not d.promoted
    ]
    record_batch(client, decisions, latencies)


def record_webhook_outcomes(client: redis.Redis, counts: Counter[str]) -> None:
    """Add webhook attempts by outcome: one round trip for many attempts."""
    if counts:
        pipe = client.pipeline(transaction=False)
        for name, count in counts.items():
            pipe.hincrby(WEBHOOK_HASH, name, count)
        pipe.execute()


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket, +Inf last, not cumulative
    total: float = 0.0
    count: int = 0

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, count) pairs as Prometheus wants them: cumulative, ending with +Inf."""
        pairs = []
        running = 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += n
            pairs.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return pairs


@dataclass
class WorkerSnapshot:
    decided: dict[str, int]
    batch: Histogram
    latency: Histogram
    sweeper_resignalled: int


def _histogram(raw: dict[str, str], prefix: str, buckets: tuple[float, ...]) -> Histogram:
    counts = [int(raw.get(f"{prefix}:b:{i}", 0)) for i in range(len(buckets) + 1)]
    return Histogram(
        buckets=buckets,
        counts=counts,
        total=float(raw.get(f"{prefix}:sum", 0)),
        count=int(raw.get(f"{prefix}:count", 0)),
    )


def parse_snapshot(raw: dict[str, str], sweeper: str | None) -> WorkerSnapshot:
    decided = {name: int(raw.get(f"decided:{name}", 0)) for name in OUTCOMES}
    return WorkerSnapshot(
        decided=decided,
        batch=_histogram(raw, "batch", BATCH_BUCKETS),
        latency=_histogram(raw, "latency", LATENCY_BUCKETS),
        sweeper_resignalled=int(sweeper or 0),
    )
