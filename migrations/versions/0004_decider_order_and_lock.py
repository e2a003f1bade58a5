"""Deciders: sold_out before limit_exceeded, and the event row locked FOR NO KEY UPDATE.

Intake refuses a request for more seats than the event has left (409 SOLD_OUT, nothing
stored). The deciders checked the per-user limit first, so the same request could be told
LIMIT_EXCEEDED by a worker but SOLD_OUT at intake. Now both say SOLD_OUT: when the seats are
not there for anyone, that is the reason a user needs.

The event row was locked FOR UPDATE, which also conflicts with the FOR KEY SHARE lock that the
foreign-key check of every new booking takes on its event: while a batch ran, intake for that
very event waited for it. FOR NO KEY UPDATE still serialises deciders (it conflicts with
itself) and with admin changes (FOR UPDATE), but lets bookings be inserted meanwhile. The
single-booking procedure of the benchmark baseline gets the same lock, to stay comparable.

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
