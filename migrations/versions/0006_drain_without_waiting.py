"""A drain of an event never waits for another drain of it; the decider's updates check status.

A drain task that waits for the event row lock holds a worker slot: during a long sale every
task queued by a new request would wait on the one hot event until all slots did, while other
events' tasks sat in the queue. So process_event_queue takes a transaction-level advisory lock
per event with pg_try_advisory_xact_lock and raises SQLSTATE 'EBUSY' when another drain holds
it; the task then leaves, and the drain holding the lock decides what arrived meanwhile
(common/bookings/signals.py). Its UPDATEs touch only rows still in the state the batch read,
and roll the batch back (serialization_failure, retried) if any is not.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQL = Path(__file__).parents[1] / "sql"
DROP_BATCH = "DROP FUNCTION IF EXISTS process_event_queue(integer, integer, text)"


def _install(function: str, version: str) -> None:
    op.execute((SQL / function / f"{version}.sql").read_text())


def upgrade() -> None:
    op.execute(DROP_BATCH)
    _install("process_event_queue", "0006")


def downgrade() -> None:
    op.execute(DROP_BATCH)
    _install("process_event_queue", "0005")
