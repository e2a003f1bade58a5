"""Thin Python faces of the stored procedures; their SQL is migrations/sql/<function>/, the
newest file of each folder being what the database runs (docs/DATABASE-SCHEMA.md)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from common.bookings.schemas import Decision

# The advisory lock class process_event_queue takes with the event id while it decides a batch
# ('EBSD' in ASCII; migrations/sql/take_batch/0008.sql).
DRAIN_LOCK_CLASS = 1162957636
BUSY = "EBUSY"  # the SQLSTATE it raises when another drain holds that lock


class EventBusy(Exception):
    """Another task is draining this event right now; the batch was not decided."""


def process_event_queue(session: Session, event_id: int, limit: int, worker: str) -> list[Decision]:
    """One batch of decisions, committed with the session; ``EventBusy`` if another drain of
    the event holds its lock (the session's transaction is then aborted: roll it back)."""
    try:
        rows = session.execute(
            text("SELECT * FROM process_event_queue(:event_id, :limit, :worker)"),
            {"event_id": event_id, "limit": limit, "worker": worker},
        ).mappings()
    except DBAPIError as exc:
        if getattr(exc.orig, "pgcode", None) == BUSY:
            raise EventBusy(event_id) from exc
        raise
    # Rows of our own procedure, typed by its RETURNS TABLE: built without re-validation,
    # which cost a tenth of the worker's Python time at 500 rows a batch.
    return [Decision.model_construct(event_id=event_id, **row) for row in rows]


def promote_waitlist(session: Session, event_id: int, worker: str) -> list[Decision]:
    """Confirm the event's waitlisted requests its free seats now fit (arrival order, the head
    waits), in the caller's transaction, which must hold the event row (``update_event``)."""
    rows = session.execute(
        text("SELECT * FROM promote_waitlist(:event_id, :worker)"),
        {"event_id": event_id, "worker": worker},
    ).mappings()
    return [Decision.model_construct(event_id=event_id, **row) for row in rows]


def seat_invariant_violations(session: Session) -> list[dict[str, int]]:
    rows = session.execute(text("SELECT * FROM seat_invariant_violations()")).mappings()
    return [dict(row) for row in rows]


def hold_violations(session: Session, grace_seconds: float) -> list[dict[str, object]]:
    """Holds more than ``grace_seconds`` past their end that are still held (their timer and
    the sweeper both missed them), and holds without an end."""
    rows = session.execute(
        text("SELECT * FROM hold_violations(:grace)"), {"grace": grace_seconds}
    ).mappings()
    return [dict(row) for row in rows]


def waitlist_violations(session: Session) -> list[dict[str, object]]:
    """What is wrong with the waiting room: a waitlist stuck while its head fits the free
    seats, a waitlisted request larger than its event, a line cursor or waitlist length that
    disagrees with the rows."""
    rows = session.execute(text("SELECT * FROM waitlist_violations()")).mappings()
    return [dict(row) for row in rows]


def events_being_drained(session: Session) -> set[int]:
    """Events a drain holds the lock of right now, in this database (pg_locks sees all)."""
    rows = session.execute(
        text(
            "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid = :class AND objsubid = 2"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ),
        {"class": DRAIN_LOCK_CLASS},
    ).scalars()
    return {int(objid) for objid in rows}
