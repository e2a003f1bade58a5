"""A faster process_event_queue with the same decisions, which also returns each booking's
created_at and decided_at (so a decision can be reported without reading the row back).

Measured on the 2-core machine (docs/BENCHMARKS.md), the 0002 version spent most of a
500-booking batch in PL/pgSQL bookkeeping that grows with the square of the batch:
``jsonb_set`` on a map of every user confirmed so far in the batch, ``array || element``
copies, and two joins back to ``bookings`` to build the log rows and the result. Here:

- seats already held come from one set-based query joined to the batch, and only users with
  more than one request in the same batch are tracked in the loop (usually nobody);
- the arrays are filled by index (in place), and carry booking id, user, quantity and
  created_at, so the log insert and the result read no table.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQL = Path(__file__).parents[1] / "sql"
DROP_BATCH = "DROP FUNCTION IF EXISTS process_event_queue(integer, integer, text)"


def upgrade() -> None:
    # The result gains two columns, which CREATE OR REPLACE cannot do.
    op.execute(DROP_BATCH)
    op.execute((SQL / "process_event_queue" / "0003.sql").read_text())


def downgrade() -> None:
    op.execute(DROP_BATCH)
    op.execute((SQL / "process_event_queue" / "0002.sql").read_text())
