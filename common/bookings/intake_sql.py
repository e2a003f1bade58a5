"""The intake statement: one round trip that checks and stores a batch of booking requests
(``common.bookings.intake`` for a moment's requests, ``service.store_request_alone`` for one),
and the per-user lock that makes its pending cap exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from sqlalchemy import RowMapping, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.types import BigInteger, Integer, Text

from common.errors import DomainError, EventNotFound, InvalidToken

# One round trip decides intake, for one request or a batch of them: ``facts`` reads what the
# checks need, one row per request, and ``ins`` inserts only the requests that pass them all;
# each request's row carries both, so a refusal costs no more than an accept. The booking rules
# are booking_verdict's (migrations/sql/booking_verdict/), asked with no seats held yet and the
# seats the event shows: what is refused at once is refused by them; 'waitlisted' is stored like
# 'confirmed' (the worker decides which it is).
#
# Each event's line is counted under the lock of its arrival counter (``lines``), which the
# insert's trigger (assign_queue_seq) would take anyway, with the batch's own earlier candidates
# for the event, which the insert is about to add: no other request of the event can be stored
# meanwhile, so QUEUE_MAX_PER_EVENT is never passed. The cursor is the statement's snapshot and
# may lag the worker: the count can only be too long, refusing a little early. The counters are
# locked, and the rows inserted, in event order, so two batches with several events never wait
# on each other in a circle; within an event, in arrival order.
#
# A retry of a stored request (its Idempotency-Key) is no candidate: the trigger numbers every
# row it sees, even one ON CONFLICT then drops, and the numbers are meant to have no gaps. Only
# two requests racing with one key still leave a gap, which overstates the places behind it by
# one until the head of the line passes it (the decider's cursor skips it).
#
# Ids are taken as bigint: an id no row can have (a token's 2**40) is then an unknown user or
# event, not a statement that fails.
INTAKE_BATCH = text(
    """
WITH req AS (
    SELECT * FROM unnest(CAST(:ords AS int[]), CAST(:user_ids AS bigint[]),
                         CAST(:event_ids AS bigint[]), CAST(:quantities AS int[]),
                         CAST(:booking_ids AS text[]), CAST(:keys AS text[]),
                         CAST(:hashes AS text[]))
        AS r(ord, r_user, r_event, r_quantity, r_booking, r_key, r_hash)
), facts AS (
    SELECT r.*, u.id AS known_user, e.id AS known_event,
           booking_verdict(e, r.r_quantity, e.available_seats, 0) AS verdict,
           e.max_seats_per_user, e.available_seats, e.version AS event_version,
           extract(epoch FROM e.event_date)::float8 AS starts_at,
           CASE WHEN e.waitlist_enabled THEN e.seat_capacity ELSE 0 END AS waitlist_up_to,
           e.line_through, e.line_gone,
           (SELECT count(*) FROM (
                SELECT 1 FROM bookings p WHERE p.user_id = r.r_user AND p.status = 'pending'
                LIMIT :max_pending) mine) AS pending,
           EXISTS (SELECT 1 FROM bookings k
                   WHERE k.user_id = r.r_user AND k.idempotency_key = r.r_key) AS replay
    FROM req r
    LEFT JOIN users u ON u.id = r.r_user
    LEFT JOIN events e ON e.id = r.r_event
), storable AS (
    SELECT f.*, (f.known_user IS NOT NULL AND f.known_event IS NOT NULL
                 AND f.verdict IN ('confirmed', 'waitlisted') AND NOT f.replay) AS storable
    FROM facts f
), counted AS (
    -- A user's earlier requests in this batch that pass the other checks count towards their
    -- pending cap too: the statement's own inserts are not visible to its subqueries.
    SELECT f.*, f.pending + coalesce(count(*) FILTER (WHERE f.storable) OVER (
               PARTITION BY f.r_user ORDER BY f.ord
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS in_flight
    FROM storable f
), candidates AS (
    SELECT c.*, c.storable AND c.in_flight < :max_pending AS candidate
    FROM counted c
), lines AS (
    SELECT l.event_id, l.arrived FROM event_lines l
    WHERE l.event_id IN (SELECT c.known_event FROM candidates c WHERE c.candidate)
    ORDER BY l.event_id
    FOR UPDATE
), ranked AS (
    -- NULL unless every other check passed.
    SELECT c.*, l.arrived - c.line_through - cardinality(c.line_gone) + count(*) FILTER (
               WHERE c.candidate) OVER (
               PARTITION BY c.known_event ORDER BY c.ord
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS waiting
    FROM candidates c LEFT JOIN lines l ON l.event_id = c.known_event AND c.candidate
), ins AS (
    INSERT INTO bookings (booking_id, user_id, event_id, quantity, idempotency_key, request_hash)
    SELECT f.r_booking, f.known_user, f.known_event, f.r_quantity, f.r_key, f.r_hash
    FROM ranked f
    WHERE f.waiting < :max_line
    ORDER BY f.known_event, f.ord
    ON CONFLICT (user_id, idempotency_key) DO NOTHING
    RETURNING *
)
SELECT f.ord, f.known_user, f.known_event, f.verdict, f.max_seats_per_user, f.available_seats,
       f.event_version, f.starts_at, f.waitlist_up_to, f.in_flight AS pending, f.waiting,
       f.line_through, f.line_gone, ins.*
FROM ranked f LEFT JOIN ins ON ins.booking_id = f.r_booking
ORDER BY f.ord
"""
).bindparams(
    bindparam("ords", type_=ARRAY(Integer)),
    bindparam("user_ids", type_=ARRAY(BigInteger)),
    bindparam("event_ids", type_=ARRAY(BigInteger)),
    bindparam("quantities", type_=ARRAY(Integer)),
    bindparam("booking_ids", type_=ARRAY(Text)),
    bindparam("keys", type_=ARRAY(Text)),
    bindparam("hashes", type_=ARRAY(Text)),
)
# The foreign keys intake's insert can trip when its row is deleted under it
# (see store_request_alone).
GONE_WITH_THE_ROW: dict[str, type[DomainError]] = {
    "fk_bookings_event_id_events": EventNotFound,
    "fk_bookings_user_id_users": InvalidToken,
}
NO_PENDING_CAP = 2**31 - 1
NO_LINE_CAP = 2**62
# The advisory lock class ('EBSP') that serialises one user's intakes while the pending cap is
# counted, so racing requests cannot all see the same count (process_event_queue's is 'EBSD').
PENDING_LOCK_CLASS = 1162957648
LOCK_USERS = text(
    "SELECT count(pg_advisory_xact_lock(:lock_class, u)) FROM unnest(CAST(:user_ids AS int[])) u"
)


def lock_pending_counts(session: Session, user_ids: Iterable[int]) -> None:
    """Hold each user's pending-cap lock until the transaction ends: the count intake reads is
    then the count it commits against. In id order, so two batches never wait on each other in
    a circle."""
    ids = sorted({u for u in user_ids if 0 < u <= NO_PENDING_CAP})  # no user has any other id
    session.execute(LOCK_USERS, {"lock_class": PENDING_LOCK_CLASS, "user_ids": ids})


class IntakeRow(NamedTuple):
    """One request as ``INTAKE_BATCH`` takes it."""

    user_id: int
    event_id: int
    quantity: int
    booking_id: str
    idempotency_key: str | None
    request_hash: str


def intake_rows(
    session: Session, requests: Sequence[IntakeRow], max_pending: int | None, max_line: int | None
) -> list[RowMapping]:
    """``INTAKE_BATCH`` for these requests: one row per request, in their order."""
    return list(
        session.execute(
            INTAKE_BATCH,
            {
                "ords": list(range(len(requests))),
                "user_ids": [r.user_id for r in requests],
                "event_ids": [r.event_id for r in requests],
                "quantities": [r.quantity for r in requests],
                "booking_ids": [r.booking_id for r in requests],
                "keys": [r.idempotency_key for r in requests],
                "hashes": [r.request_hash for r in requests],
                "max_pending": NO_PENDING_CAP if max_pending is None else max_pending,
                "max_line": NO_LINE_CAP if max_line is None else max_line,
            },
        )
        .mappings()
        .all()
    )


def gone_with_the_row(exc: IntegrityError) -> DomainError | None:
    """The error a request gets when its event (or user) was read, then deleted by a
    transaction that committed before its insert's foreign-key check: to the client it is
    gone, as if it had never been read. None for any other violation."""
    constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)
    gone = GONE_WITH_THE_ROW.get(constraint or "")
    return None if gone is None else gone()
