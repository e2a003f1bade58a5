"""Webhook tasks: deliver an endpoint's outbox, and the sweeper that finds what a lost task
left. Thin: the logic is common/webhooks/deliverer.py."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence

import redis
from sqlalchemy.exc import OperationalError

from common.bookings.schemas import Decision
from common.db import session_scope
from common.metrics import record_webhook_outcomes
from common.tasks import DELIVER_WEBHOOKS, SWEEP_WEBHOOKS, WEBHOOKS_QUEUE
from common.webhooks import deliverer
from common.webhooks.delivery import Outcome
from worker.app import Resources, app, resources

logger = logging.getLogger(__name__)
TRANSIENT = (OperationalError, redis.ConnectionError, redis.TimeoutError)
FLUSH_EVERY = 100  # attempts counted in memory before they go to Redis
# One task works this long at most, then hands on to the next (task_time_limit is 120 s).
DRAIN_SECONDS = 60.0


@app.task(
    name=DELIVER_WEBHOOKS,
    autoretry_for=TRANSIENT,
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=10,
)
def deliver(endpoint_id: int) -> dict[str, object]:
    """Send the endpoint's due messages in order; leave at once if another task is."""
    res = resources()
    counts: Counter[str] = Counter()

    def count(outcome: Outcome, age: float) -> None:
        counts[outcome.verdict] += 1
        if sum(counts.values()) >= FLUSH_EVERY:
            _flush(res, counts)

    try:
        result = deliverer.deliver_endpoint(
            res.engine, endpoint_id, res.settings, count,
            deadline=time.monotonic() + DRAIN_SECONDS,
        )  # fmt: skip
    finally:
        _flush(res, counts)
    if result["more"]:  # a long backlog goes on in a new task, within the time limits
        kick(endpoint_id)
    return result


def _flush(res: Resources, counts: Counter[str]) -> None:
    try:
        record_webhook_outcomes(res.redis, counts)
    except Exception as exc:  # metrics never cost a delivery
        logger.warning("could not record webhook metrics: %s", exc)
    counts.clear()


def kick(endpoint_id: int) -> None:
    app.send_task(DELIVER_WEBHOOKS, args=[endpoint_id], queue=WEBHOOKS_QUEUE)


@app.task(name=SWEEP_WEBHOOKS, autoretry_for=TRANSIENT, max_retries=3, retry_backoff=1)
def sweep() -> dict[str, int]:
    """Safety net: a deliver task for every endpoint with a message due (a retry whose time
    came, or a message whose task was lost: broker down at the commit, a worker killed)."""
    res = resources()
    with session_scope(res.session_factory) as session:
        endpoint_ids = deliverer.due_endpoint_ids(session)
    for endpoint_id in endpoint_ids:
        kick(endpoint_id)
    return {"kicked": len(endpoint_ids)}


_scopes: tuple[float, list[tuple[int, int | None]]] = (0.0, [])
SCOPES_TTL = 1.0  # seconds this process trusts its list of enabled endpoints


def after_batch(res: Resources, batch: Sequence[Decision]) -> None:
    """After a decided batch commits: a deliver task for each enabled endpoint it concerns.
    The outbox rows are already committed with the batch, so a task lost here only waits for
    the sweeper. With no endpoint enabled it costs a query a second, and sends nothing."""
    global _scopes
    if not batch:
        return
    if time.monotonic() - _scopes[0] > SCOPES_TTL:
        with session_scope(res.session_factory) as session:
            _scopes = (time.monotonic(), deliverer.enabled_scopes(session))
    for endpoint_id in deliverer.concerned(_scopes[1], batch[0].event_id):
        kick(endpoint_id)
