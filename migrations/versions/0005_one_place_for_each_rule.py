"""The booking verdict in one function that every path asks; indexes only where a query uses them.

The rules (event started -> event_past; more seats than are left -> sold_out; more than the
per-user limit -> limit_exceeded; in that order) have one home, booking_verdict(): the deciders
call it, and the intake and the baseline's check call it in their queries, so the batch
decider, create_booking, the intake query and the baseline's check cannot disagree.

cancel_booking goes: nothing calls it (the API asks for a cancellation and process_event_queue
does it).

Indexes no query uses go, each costing every insert and decision: on bookings status, created_at
and event_id (replaced by (event_id, id), which also gives the event's booking list its order);
on booking_logs action, timestamp and (user_id, event_id). docs/DATABASE-SCHEMA.md shows the
plan of each query with the index it uses.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQL = Path(__file__).parents[1] / "sql"
DROP_BATCH = "DROP FUNCTION IF EXISTS process_event_queue(integer, integer, text)"


# name, table, columns: indexes of 0001 no query needs (idx_bookings_event_id_id serves every
# query on event_id).
UNUSED = (
    ("idx_bookings_status", "bookings", ["status"]),
    ("idx_bookings_created_at", "bookings", ["created_at"]),
    ("idx_bookings_event_id", "bookings", ["event_id"]),
    ("idx_booking_logs_action", "booking_logs", ["action"]),
    ("idx_booking_logs_timestamp", "booking_logs", ["timestamp"]),
    ("idx_booking_logs_user_event", "booking_logs", ["user_id", "event_id"]),
)


def _install(function: str, version: str) -> None:
    op.execute((SQL / function / f"{version}.sql").read_text())


def upgrade() -> None:
    _install("booking_verdict", "0005")
    op.execute(DROP_BATCH)
    _install("process_event_queue", "0005")
    _install("create_booking", "0005")
    _install("cancel_booking", "0005")
    op.create_index("idx_bookings_event_id_id", "bookings", ["event_id", "id"])
    for name, table, _ in UNUSED:
        op.drop_index(name, table_name=table)


def downgrade() -> None:
    for name, table, columns in UNUSED:
        op.create_index(name, table, columns)
    op.drop_index("idx_bookings_event_id_id", table_name="bookings")
    _install("cancel_booking", "0002")
    op.execute(DROP_BATCH)
    _install("process_event_queue", "0004")
    _install("create_booking", "0004")
    op.execute("DROP FUNCTION IF EXISTS booking_verdict(events, integer, integer, integer)")
