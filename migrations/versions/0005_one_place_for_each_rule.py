"""The booking verdict in one function that every path asks.

The rules (event started -> event_past; more seats than are left -> sold_out; more than the
per-user limit -> limit_exceeded; in that order) were written in the batch decider, in
create_booking, in the intake query and in the baseline's Python check, and two copies had
already disagreed once. booking_verdict() is now their one home; the deciders call it, and the
intake and the baseline's check call it in their queries.

cancel_booking goes: nothing called it (the API asks for a cancellation and process_event_queue
does it), only a test checked that it existed.

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


def _install(function: str, version: str) -> None:
    op.execute((SQL / function / f"{version}.sql").read_text())


def upgrade() -> None:
    _install("booking_verdict", "0005")
    op.execute(DROP_BATCH)
    _install("process_event_queue", "0005")
    _install("create_booking", "0005")
    _install("cancel_booking", "0005")


def downgrade() -> None:
    _install("cancel_booking", "0002")
    op.execute(DROP_BATCH)
    _install("process_event_queue", "0004")
    _install("create_booking", "0004")
    op.execute("DROP FUNCTION IF EXISTS booking_verdict(events, integer, integer, integer)")
