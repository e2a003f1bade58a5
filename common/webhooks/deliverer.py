"""Delivering an endpoint's outbox: one deliverer per endpoint at a time, oldest message first.

A ``webhooks.deliver`` task (worker/webhooks.py) calls ``deliver_endpoint``. It takes the
endpoint's advisory lock (a session lock on a connection of its own, so a deliverer killed
mid-request frees it with its connection), sends the due messages in outbox order over one
kept-alive connection, and records each outcome. Whoever finds the lock taken leaves at once;
the holder, after letting go, reads once more, so a message committed while it worked and
whose task found it busy is not left behind (the same protocol as the bookings' drain,
common/bookings/signals.py). A lost task is the sweeper's case (``due_endpoint_ids``).

Order and retries (docs/WEBHOOKS.md): a retryable failure (timeout, broken connection, 408,
429, 5xx) holds the endpoint's whole queue until ``retry_at``, when the failed message goes
first again; the delay follows ``WEBHOOK_RETRY_DELAYS`` by the count of consecutive failures,
with +-20 % jitter, or the receiver's ``Retry-After``. Another 4xx fails that message and the
queue goes on. ``WEBHOOK_DISABLE_AFTER`` consecutive failures, or one 410, disable the
endpoint with the reason written on it; its messages wait for it to be enabled again.

A message is sent, then recorded: a deliverer that dies in between sends it again, with the same
``webhook-id``. Successes are recorded once per batch, in the transaction that reads the next
(a crash resends at most that batch). The loop is Core SQL, not the ORM: it runs per message.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Row, insert, select, text, update
from sqlalchemy.orm import Session

from common.errors import DestinationRefused
from common.settings import Settings
from common.webhooks import messages
from common.webhooks.delivery import Outcome, Sender, resolve
from common.webhooks.models import WebhookAttempt, WebhookEndpoint, WebhookMessage

logger = logging.getLogger(__name__)

LOCK_CLASS = 1162957655  # 'EBSW' in ASCII: the advisory lock class of endpoint deliverers
BATCH = 100
JITTER = 0.2

# Called with each outcome and the age of its message (decision to attempt), for the metrics.
OnOutcome = Callable[[Outcome, float], object]


@dataclass
class Endpoint:
    id: int
    url: str
    secrets: list[str]


def retry_delay(failures: int, settings: Settings, wait: float | None) -> float:
    """Seconds until the next attempt after ``failures`` consecutive failures."""
    delays = settings.WEBHOOK_RETRY_DELAYS
    if wait is not None:  # the receiver said when; never longer than our longest wait
        return min(max(wait, 1.0), delays[-1])
    base = delays[min(failures, len(delays)) - 1]
    return base * random.uniform(1 - JITTER, 1 + JITTER)


def deliver_endpoint(
    engine: Engine,
    endpoint_id: int,
    settings: Settings,
    on_outcome: OnOutcome,
    *,
    deadline: float,
) -> dict[str, Any]:
    """Deliver until nothing is due or ``deadline`` (time.monotonic) passes: then ``more``."""
    attempted = 0
    result = {"endpointId": endpoint_id, "busy": False, "more": False}
    while True:
        with engine.connect() as lock:
            args = {"c": LOCK_CLASS, "e": endpoint_id}
            taken = lock.execute(text("SELECT pg_try_advisory_lock(:c, :e)"), args).scalar()
            lock.commit()  # the lock is the session's; no transaction stays open
            if not taken:
                return {**result, "attempted": attempted, "busy": True}
            try:
                attempted += _drain(engine, endpoint_id, settings, on_outcome, deadline)
            finally:
                lock.execute(text("SELECT pg_advisory_unlock(:c, :e)"), args)
                lock.commit()
        with engine.connect() as conn:
            due = conn.scalar(due_endpoints().where(WebhookEndpoint.id == endpoint_id)) is not None
        if not due or time.monotonic() > deadline:
            return {**result, "attempted": attempted, "more": due}


def due_endpoints():  # type: ignore[no-untyped-def]
    """Enabled endpoints, not waiting for a retry, with a message due."""
    due = (
        select(WebhookMessage.id)
        .where(
            WebhookMessage.endpoint_id == WebhookEndpoint.id,
            WebhookMessage.state == "pending",
            WebhookMessage.next_attempt_at <= text("now()"),
        )
        .exists()
    )
    return select(WebhookEndpoint.id).where(
        WebhookEndpoint.enabled,
        (WebhookEndpoint.retry_at.is_(None)) | (WebhookEndpoint.retry_at <= text("now()")),
        due,
    )


def due_endpoint_ids(session: Session) -> list[int]:
    return list(session.scalars(due_endpoints().order_by(WebhookEndpoint.id)))


ENDPOINT = text(
    "SELECT url, secret, previous_secret, previous_secret_until, enabled, retry_at"
    " FROM webhook_endpoints WHERE id = :e"
)


def _load(conn: Connection, endpoint_id: int) -> Endpoint | None:
    """The endpoint if it may be sent to now, with the secrets that sign."""
    ep = conn.execute(ENDPOINT, {"e": endpoint_id}).first()
    now = datetime.now(UTC)
    if ep is None or not ep.enabled or (ep.retry_at is not None and ep.retry_at > now):
        return None
    secrets = [ep.secret]
    if ep.previous_secret and ep.previous_secret_until and ep.previous_secret_until > now:
        secrets.append(ep.previous_secret)
    return Endpoint(endpoint_id, ep.url, secrets)


DUE = text(
    """
SELECT m.id, m.log_id, m.created_at, l.booking_id, l.action, l.user_id, l.event_id, l.details,
       l.timestamp
FROM webhook_messages m JOIN booking_logs l ON l.id = m.log_id
WHERE m.endpoint_id = :e AND m.state = 'pending' AND m.next_attempt_at <= now()
ORDER BY m.id LIMIT :n
"""
)


def _next_batch(
    conn: Connection, endpoint_id: int
) -> tuple[Endpoint | None, Sequence[Row[Any]]]:  # fmt: skip
    endpoint = _load(conn, endpoint_id)  # a rotation or a disable since the last batch
    batch = conn.execute(DUE, {"e": endpoint_id, "n": BATCH}).all() if endpoint else []
    return endpoint, batch


def _drain(
    engine: Engine,
    endpoint_id: int,
    settings: Settings,
    on_outcome: OnOutcome,
    deadline: float,
) -> int:
    with engine.connect() as conn:
        endpoint = _load(conn, endpoint_id)
    if endpoint is None:
        return 0
    try:
        target = resolve(endpoint.url, settings.webhook_allowed_networks)
    except DestinationRefused as exc:
        with engine.connect() as conn:
            head = conn.execute(DUE, {"e": endpoint_id, "n": 1}).first()
        if head is not None:
            refused = Outcome("retry", None, f"refused: {exc.message}"[:200], 0, None)
            _record_failure(engine, endpoint_id, head, refused, settings)
            on_outcome(refused, _age(head))
        return 1 if head is not None else 0
    sender = Sender(
        target, connect_timeout=settings.WEBHOOK_CONNECT_TIMEOUT, timeout=settings.WEBHOOK_TIMEOUT
    )
    attempted = 0
    delivered: list[tuple[Row[Any], Outcome]] = []
    try:
        while True:
            # One transaction records the batch just sent and reads the next.
            with engine.begin() as conn:
                _record_delivered(conn, endpoint_id, delivered)
                delivered = []
                endpoint, batch = _next_batch(conn, endpoint_id)
            if endpoint is None or not batch or time.monotonic() > deadline:
                return attempted
            signers = messages.signers(endpoint.secrets)
            for row in batch:
                body = messages.payload(
                    log_id=row.log_id,
                    booking_id=row.booking_id,
                    action=row.action,
                    user_id=row.user_id,
                    event_id=row.event_id,
                    details=row.details,
                    timestamp=row.timestamp,
                )
                msg_id = messages.message_id(row.log_id)
                now = datetime.now(UTC)
                outcome = sender.send(body, messages.headers(msg_id, body, signers, now))
                attempted += 1
                on_outcome(outcome, (now - row.created_at).total_seconds())
                if outcome.verdict == "delivered":
                    delivered.append((row, outcome))
                    continue
                with engine.begin() as conn:
                    _record_delivered(conn, endpoint_id, delivered)
                delivered = []
                if _record_failure(engine, endpoint_id, row, outcome, settings):
                    return attempted  # the endpoint waits (or is disabled): so does its queue
    finally:
        sender.close()


def _age(row: Row[Any]) -> float:
    return (datetime.now(UTC) - row.created_at).total_seconds()


# One statement per batch: its attempts logged, its messages marked delivered.
DELIVERED = text(
    """
WITH d AS (
    SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:statuses AS integer[]),
                         CAST(:latencies AS integer[]), CAST(:heads AS text[]))
        AS d(id, status, latency, head)
), logged AS (
    INSERT INTO webhook_attempts (message_id, status_code, latency_ms, response_head)
    SELECT id, status, latency, head FROM d
)
UPDATE webhook_messages m SET state = 'delivered', delivered_at = now(),
    attempts = m.attempts + 1, last_status = d.status, last_error = NULL
FROM d WHERE m.id = d.id
"""
)
# A success ends a run of failures (the statement writes only if there was one).
SUCCEEDED = text(
    "UPDATE webhook_endpoints SET failure_count = 0, retry_at = NULL"
    " WHERE id = :e AND failure_count > 0"
)


def _record_delivered(
    conn: Connection, endpoint_id: int, delivered: list[tuple[Row[Any], Outcome]]
) -> None:
    if not delivered:
        return
    conn.execute(
        DELIVERED,
        {
            "ids": [row.id for row, _ in delivered],
            "statuses": [outcome.status_code for _, outcome in delivered],
            "latencies": [outcome.latency_ms for _, outcome in delivered],
            "heads": [outcome.response_head for _, outcome in delivered],
        },
    )
    conn.execute(SUCCEEDED, {"e": endpoint_id})


def describe(outcome: Outcome) -> str:
    return f"HTTP {outcome.status_code}" if outcome.status_code else outcome.error or "failed"


def _record_failure(
    engine: Engine,
    endpoint_id: int,
    row: Row[Any],
    outcome: Outcome,
    settings: Settings,
) -> bool:
    """Write a failed attempt; True if the endpoint's queue must now wait (or is disabled)."""
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(WebhookAttempt).values(
                message_id=row.id,
                status_code=outcome.status_code,
                error=outcome.error,
                latency_ms=outcome.latency_ms,
                response_head=outcome.response_head,
            )
        )
        failures = conn.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint_id)
            .values(failure_count=WebhookEndpoint.failure_count + 1)
            .returning(WebhookEndpoint.failure_count)
        ).scalar_one()
        message: dict[str, Any] = {
            "attempts": WebhookMessage.attempts + 1,
            "last_status": outcome.status_code,
            "last_error": outcome.error,
        }
        endpoint: dict[str, Any] = {}
        reason = None
        if outcome.verdict == "gone":
            reason = f"the receiver answered 410 Gone at {now:%Y-%m-%d %H:%M:%S}Z"
        elif failures >= settings.WEBHOOK_DISABLE_AFTER:
            reason = (
                f"{failures} consecutive failed attempts; the last at {now:%Y-%m-%d %H:%M:%S}Z:"
                f" {describe(outcome)}"
            )
        if outcome.verdict == "failed":
            message["state"] = "failed"  # not retried; the queue goes on
        elif outcome.verdict == "retry":
            retry_at = now + timedelta(seconds=retry_delay(failures, settings, outcome.retry_after))
            message["next_attempt_at"] = retry_at
            endpoint["retry_at"] = retry_at
        if reason is not None:
            endpoint.update(enabled=False, disabled_reason=reason, disabled_at=now)
            logger.warning("webhook endpoint %s disabled: %s", endpoint_id, reason)
        conn.execute(update(WebhookMessage).where(WebhookMessage.id == row.id).values(**message))
        if endpoint:
            conn.execute(
                update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id).values(**endpoint)
            )
    return outcome.verdict != "failed" or reason is not None


def enabled_scopes(session: Session) -> list[tuple[int, int | None]]:
    """(endpoint id, event filter) of every enabled endpoint: whom a decided batch may concern."""
    rows = session.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.event_id).where(WebhookEndpoint.enabled)
    )
    return [(i, e) for i, e in rows]


def concerned(scopes: list[tuple[int, int | None]], event_id: int) -> list[int]:
    """The endpoints of ``scopes`` (from ``enabled_scopes``) that hear of ``event_id``."""
    return [endpoint_id for endpoint_id, only in scopes if only is None or only == event_id]
