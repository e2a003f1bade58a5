"""Stored procedures: the batch decider the worker calls, the seed's single-booking pair
(kept for the synchronous benchmark baseline), and the seat invariant check.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each procedure is one file per version: migrations/sql/<function>/<revision>.sql.
SQL = Path(__file__).parents[1] / "sql"
FUNCTIONS = ("process_event_queue", "create_booking", "cancel_booking", "seat_invariant_violations")


def upgrade() -> None:
    for function in FUNCTIONS:
        op.execute((SQL / function / "0002.sql").read_text())


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS seat_invariant_violations()")
    op.execute("DROP FUNCTION IF EXISTS cancel_booking(varchar)")
    op.execute("DROP FUNCTION IF EXISTS create_booking(integer, integer, varchar, integer)")
    op.execute("DROP FUNCTION IF EXISTS process_event_queue(integer, integer, text)")
