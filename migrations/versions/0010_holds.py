"""Holds that expire (issue 21): an event may ask for a hold (``hold_seconds``); a request the
decider accepts is then ``held`` until its ``expires_at``, when it is confirmed (the buyer, a
payment) or ``expired`` (its seats back, the waitlist promoted, in one decider batch).

- ``events.hold_seconds`` (NULL: no hold, today's behaviour); ``bookings.expires_at``; the
  statuses ``held`` and ``expired``.
- ``decide_expiries`` (a decider step: held past expires_at -> expired) and ``hold_decisions``
  (confirmed -> held on an event with hold_seconds, before settling); ``decide_cancellations``,
  ``decide_requests``, ``apply_decisions``, ``move_line``, ``log_decisions`` count a held
  booking's seats as taken; ``settle_decisions``, ``process_event_queue`` and
  ``promote_waitlist`` return ``expires_at``.
- ``seat_invariant_violations``: available + confirmed + held = capacity; ``hold_violations``
  finds holds past their time still held.
- ``idx_bookings_held_expiry`` (event_id, expires_at) where held: the expiry step, the
  scheduler's next expiry, the sweeper. ``idx_bookings_held_user`` and
  ``idx_bookings_cancel_requested`` take held rows too.
- ``payment_callbacks``: each verified payment callback by its ``webhook-id`` (idempotency),
  with what it did (``confirmed``, ``already_confirmed``, ``refund_required``).

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQL = Path(__file__).parents[1] / "sql"
TZ = sa.DateTime(timezone=True)
STATUSES_0007 = "status IN ('pending', 'waitlisted', 'confirmed', 'rejected', 'cancelled')"
STATUSES = (
    "status IN ('pending', 'waitlisted', 'held', 'confirmed', 'rejected', 'cancelled', 'expired')"
)
CANCEL_0007 = "status IN ('pending', 'waitlisted', 'confirmed') AND cancel_requested_at IS NOT NULL"
CANCEL = (
    "status IN ('pending', 'waitlisted', 'confirmed', 'held') AND cancel_requested_at IS NOT NULL"
)
HELD_0007 = "status IN ('confirmed', 'waitlisted')"
HELD = "status IN ('confirmed', 'held', 'waitlisted')"
# New functions, then the replaced ones, in dependency order.
NEW = ("decide_expiries", "hold_decisions", "hold_violations")
REPLACED = (
    "decide_cancellations",
    "decide_requests",
    "apply_decisions",
    "move_line",
    "log_decisions",
)
# Their return type changes: dropped (callers first) and created again.
RETURNS = ("process_event_queue", "promote_waitlist", "settle_decisions")
SIGNATURES = {
    "decide_cancellations": "decide_cancellations(events, integer)",
    "decide_requests": "decide_requests(events, decision[], integer)",
    "apply_decisions": "apply_decisions(events, decision[], timestamptz)",
    "move_line": "move_line(events, decision[])",
    "log_decisions": "log_decisions(events, decision[], bigint, bigint[], text)",
    "process_event_queue": "process_event_queue(integer, integer, text)",
    "promote_waitlist": "promote_waitlist(integer, text)",
    "settle_decisions": "settle_decisions(events, decision[], text)",
    "seat_invariant_violations": "seat_invariant_violations()",
}
PREVIOUS = {
    "decide_cancellations": "0008",
    "decide_requests": "0008",
    "apply_decisions": "0008",
    "move_line": "0008",
    "log_decisions": "0008",
    "process_event_queue": "0008",
    "promote_waitlist": "0008",
    "settle_decisions": "0008",
    "seat_invariant_violations": "0002",
}


def _install(function: str, version: str) -> None:
    op.execute((SQL / function / f"{version}.sql").read_text())


def _drop(function: str) -> None:
    op.execute(f"DROP FUNCTION {SIGNATURES[function]}")


def _statuses_and_indexes(statuses: str, cancel: str, held: str) -> None:
    op.drop_constraint(op.f("ck_bookings_status"), "bookings", type_="check")
    op.create_check_constraint(op.f("ck_bookings_status"), "bookings", statuses)
    op.drop_index("idx_bookings_cancel_requested", table_name="bookings")
    op.create_index(
        "idx_bookings_cancel_requested", "bookings", ["event_id", "id"], postgresql_where=cancel
    )
    op.drop_index("idx_bookings_held_user", table_name="bookings")
    op.create_index(
        "idx_bookings_held_user", "bookings", ["event_id", "user_id"], postgresql_where=held
    )


def upgrade() -> None:
    op.add_column("events", sa.Column("hold_seconds", sa.Integer()))
    op.create_check_constraint(
        op.f("ck_events_hold_seconds"), "events", "hold_seconds IS NULL OR hold_seconds > 0"
    )
    op.add_column("bookings", sa.Column("expires_at", TZ))
    _statuses_and_indexes(STATUSES, CANCEL, HELD)
    op.create_index(
        "idx_bookings_held_expiry",
        "bookings",
        ["event_id", "expires_at"],
        postgresql_where="status = 'held'",
    )
    op.create_table(
        "payment_callbacks",
        sa.Column("webhook_id", sa.String(255), primary_key=True),
        sa.Column("booking_id", sa.String(50), nullable=False),
        sa.Column("payment_reference", sa.String(255), nullable=False),
        sa.Column("outcome", sa.String(30), nullable=False),
        sa.Column("reason", sa.String(40)),
        sa.Column("received_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(
            "outcome IN ('confirmed', 'already_confirmed', 'refund_required')",
            name=op.f("ck_payment_callbacks_outcome"),
        ),
    )
    op.create_index(
        "idx_payment_callbacks_refund",
        "payment_callbacks",
        ["received_at"],
        postgresql_where="outcome = 'refund_required'",
    )
    for function in RETURNS:
        _drop(function)
    _drop("seat_invariant_violations")
    for function in NEW:
        _install(function, "0010")
    for function in REPLACED:
        _drop(function)
        _install(function, "0010")
    for function in ("settle_decisions", "process_event_queue", "promote_waitlist"):
        _install(function, "0010")
    _install("seat_invariant_violations", "0010")


def downgrade() -> None:
    for function in RETURNS:
        _drop(function)
    _drop("seat_invariant_violations")
    for function in REPLACED:
        _drop(function)
        _install(function, PREVIOUS[function])
    for function in ("settle_decisions", "process_event_queue", "promote_waitlist"):
        _install(function, PREVIOUS[function])
    _install("seat_invariant_violations", PREVIOUS["seat_invariant_violations"])
    for function in reversed(NEW):
        signature = {
            "decide_expiries": "decide_expiries(events, integer)",
            "hold_decisions": "hold_decisions(events, decision[])",
            "hold_violations": "hold_violations(double precision)",
        }[function]
        op.execute(f"DROP FUNCTION {signature}")
    op.drop_table("payment_callbacks")
    op.drop_index("idx_bookings_held_expiry", table_name="bookings")
    # Holds and expiries have no meaning before 0010: a hold is a confirmed booking, an expired
    # one cancelled.
    op.execute("UPDATE bookings SET status = 'confirmed' WHERE status = 'held'")
    op.execute(
        "UPDATE bookings SET status = 'cancelled', cancelled_at = coalesce(cancelled_at, now())"
        " WHERE status = 'expired'"
    )
    _statuses_and_indexes(STATUSES_0007, CANCEL_0007, HELD_0007)
    op.drop_column("bookings", "expires_at")
    op.drop_constraint(op.f("ck_events_hold_seconds"), "events", type_="check")
    op.drop_column("events", "hold_seconds")
