"""Deciders: sold_out before limit_exceeded, and the event row locked FOR NO KEY UPDATE.

Intake refuses a request for more seats than the event has left (409 SOLD_OUT, nothing
stored), so the deciders check the seats before the per-user limit too: one request gets one
reason wherever it is decided, and when the seats are not there for anyone, SOLD_OUT is the
reason a user needs.

The deciders lock the event row FOR NO KEY UPDATE, not FOR UPDATE: FOR UPDATE also conflicts
with the FOR KEY SHARE lock that the foreign-key check of every new booking takes on its event,
so intake for that very event would wait for each batch. FOR NO KEY UPDATE still serialises
deciders (it conflicts with itself) and admin changes (FOR UPDATE), and lets bookings be
inserted meanwhile. The single-booking procedure of the benchmark baseline takes the same lock,
to stay comparable.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQL = Path(__file__).parents[1] / "sql"
DROP_BATCH = "DROP FUNCTION IF EXISTS process_event_queue(integer, integer, text)"


def _install(function: str, version: str) -> None:
    op.execute((SQL / function / f"{version}.sql").read_text())


def upgrade() -> None:
    op.execute(DROP_BATCH)
    _install("process_event_queue", "0004")
    _install("create_booking", "0004")


def downgrade() -> None:
    op.execute(DROP_BATCH)
    _install("process_event_queue", "0003")
    _install("create_booking", "0002")
