"""The synchronous benchmark baseline leaves the product: create_booking goes.

Only the benchmark's synchronous design called it. The bench now installs its own copy
(bench/create_booking.sql) into the bench database after the migrations, so a change to the
booking rules no longer has to touch a benchmark. Downgrade installs 0007's body again.

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQL = Path(__file__).parents[1] / "sql"


def _install(function: str, version: str) -> None:
    op.execute((SQL / function / f"{version}.sql").read_text())


def upgrade() -> None:
    _install("create_booking", "0011")


def downgrade() -> None:
    _install("create_booking", "0007")
