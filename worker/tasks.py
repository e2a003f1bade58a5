"""Thin tasks: they take ids, call ``common``, and are safe to run more than once."""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime

import redis
from sqlalchemy.exc import OperationalError

from common.bookings import holds
from common.bookings.drain import drain_event
from common.bookings.messages import publish_decisions
from common.bookings.schemas import Decision
from common.bookings.signals import resignal_event, signal_event, take_signal
from common.bookings.sweeper import pending_event_ids
from common.db import session_scope
from common.metrics import SWEEPER_KEY, record_decided_batch
from common.tasks import PROCESS_EVENT, SWEEP, WARN_HOLDS
from worker import webhooks
from worker.app import Resources, app, resources

logger = logging.getLogger(__name__)

TRANSIENT = (OperationalError, redis.ConnectionError, redis.TimeoutError)


@app.task(
    name=PROCESS_EVENT,
    autoretry_for=TRANSIENT,
    retry_backoff=0.5,
    retry_backoff_max=10,
    retry_jitter=True,
    max_retries=10,
)
def process_event(event_id: int) -> dict[str, int | bool]:
    """Decide every queued booking and cancellation of one event, in batches; leave at once if
    another task is draining it (common/bookings/signals.py says why nothing is stranded)."""
    res = resources()
    publisher = _publisher()
    sent: list[Future[None]] = []
    try:
        decisions, busy = drain_event(
            res.session_factory,
            event_id,
            batch_size=res.settings.BATCH_SIZE,
            worker=res.name,
            publish=lambda batch: sent.append(publisher.submit(_after_batch, res, batch)),
            take_signal=lambda: take_signal(res.redis, event_id),
            resignal=lambda: signal_event(res.redis, app, event_id, ttl=res.settings.SIGNAL_TTL),
        )
    finally:
        # The task ends once its messages are out: none is lost with a worker that stops after.
        for future in sent:
            try:
                future.result()
            except Exception:  # the data is committed; waiters fall back to reading it
                logger.exception("publishing a decided batch failed", extra={"event_id": event_id})
    if decisions:
        logger.info("decided event=%s count=%s worker=%s", event_id, len(decisions), res.name)
    return {"eventId": event_id, "decided": len(decisions), "busy": busy}


_publisher_of: tuple[int, ThreadPoolExecutor] | None = None


def _publisher() -> ThreadPoolExecutor:
    """This process's one publishing thread (made after fork). A committed batch's messages go
    out while the next batch is decided in PostgreSQL, psycopg2 having let go of the GIL; one
    thread keeps them in commit order. Inline, publishing took ~40% of a drain's time."""
    global _publisher_of
    if _publisher_of is None or _publisher_of[0] != os.getpid():
        _publisher_of = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="publish"))
    return _publisher_of[1]


def _after_batch(res: Resources, batch: list[Decision]) -> None:
    """Runs after each batch commits: tell waiters and sockets first, set the timers of the
    holds it made, then count the batch."""
    publish_decisions(res.redis, batch)
    _set_hold_timers(res, batch)
    try:
        webhooks.after_batch(res, batch)
    except Exception as exc:  # the outbox is committed: the webhook sweeper sends it later
        logger.warning(
            "could not send webhook tasks: %s", exc, extra={"event_id": batch[0].event_id}
        )
    if logger.isEnabledFor(logging.DEBUG):
        for d in batch:
            extra = {"booking_id": d.booking_id, "event_id": d.event_id, "reason": d.reason}
            logger.debug("booking %s", d.status, extra=extra)
    try:
        record_decided_batch(res.redis, batch)
    except Exception as exc:  # metrics must never cost a decision or its message
        logger.warning(
            "could not record batch metrics: %s", exc, extra={"event_id": batch[0].event_id}
        )


def _set_hold_timers(res: Resources, batch: list[Decision]) -> None:
    """One expiry drain and one warning per batch that held seats (its holds share an end), if
    the end is within HOLD_TIMER_HORIZON; the sweeper sends the later ones, and expires what a
    failed send missed (late by at most SWEEP_PENDING_AFTER + a sweep)."""
    ends = {d.expires_at for d in batch if d.status == "held" and d.expires_at is not None}
    for expires_at in ends:
        try:
            holds.set_timers(
                res.redis, app, batch[0].event_id, expires_at,
                horizon=res.settings.HOLD_TIMER_HORIZON,
                warn_before=res.settings.HOLD_WARNING_SECONDS,
            )  # fmt: skip
        except Exception as exc:
            logger.warning(
                "could not set a hold timer: %s", exc, extra={"event_id": batch[0].event_id}
            )


@app.task(name=WARN_HOLDS, autoretry_for=TRANSIENT, max_retries=3, retry_backoff=0.5)
def warn_holds(event_id: int, expires_at: str) -> dict[str, int]:
    """``hold_expiring`` to the owners of the event's holds ending at ``expires_at`` that are
    still held. A second delivery warns again: a repeated warning is harmless."""
    res = resources()
    with session_scope(res.session_factory) as session:
        statuses = holds.warn_holds(session, event_id, datetime.fromisoformat(expires_at))
    holds.publish_statuses(res.redis, statuses)
    return {"eventId": event_id, "warned": len(statuses)}


@app.task(name=SWEEP, autoretry_for=TRANSIENT, max_retries=3, retry_backoff=1)
def sweep() -> dict[str, int]:
    """Safety net: signal events whose requests waited too long while no drain works on them.
    Not through the deduplicated signal: its key may stand for a task that was never sent
    (common/bookings/signals.py, rule 4). Each signal sent is counted and logged. And the
    timers of holds whose end has come within HOLD_TIMER_HORIZON (common/bookings/holds.py)."""
    res = resources()
    with session_scope(res.session_factory) as session:
        event_ids = pending_event_ids(session, res.settings.SWEEP_PENDING_AFTER)
        ends = holds.timer_ends(session, res.settings.HOLD_TIMER_HORIZON)
    for event_id, expires_at in ends:
        holds.set_timers(
            res.redis, app, event_id, expires_at,
            horizon=res.settings.HOLD_TIMER_HORIZON,
            warn_before=res.settings.HOLD_WARNING_SECONDS,
        )  # fmt: skip
    for event_id in event_ids:
        resignal_event(res.redis, app, event_id, ttl=res.settings.SIGNAL_TTL)
    if event_ids:
        res.redis.incrby(SWEEPER_KEY, len(event_ids))
        logger.warning("sweeper re-signalled %d event(s): %s", len(event_ids), event_ids)
    return {"resignalled": len(event_ids), "holdTimers": len(ends)}
