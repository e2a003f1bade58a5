"""The decider in steps: process_event_queue as a list of functions passing one array of a
composite ``decision`` type (docs/DATABASE-SCHEMA.md, "The decider").

``decision`` is one decided request: the row it was (id, booking_id, user_id, quantity,
created_at, queue_seq, prev = its status before), what it becomes (status, reason, promoted)
and the event after it (seats_left, waitlist_left). The steps: take_batch (the locks),
decide_cancellations, decide_waitlist_past, decide_promotions, decide_requests (each returns
its decisions; event_after is the event as they leave it), then settle_decisions, shared with
promote_waitlist: apply_decisions (the rows), move_line (the event row and its line cursor),
log_decisions (the audit rows), place_in_line (a place in line from the cursor). The results
are those of the single function of 0007, in one transaction and one round trip per batch.

A waitlisted request that wants more seats than the event holds can never be met and, at the
head, would hold the line forever (issue 18): promote_waitlist, which the API's edit runs,
rejects such requests first (decide_oversized_waitlist, reason ``capacity_lowered``), and
waitlist_violations reports one as ``oversized_waitlist``.

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQL = Path(__file__).parents[1] / "sql"
DECISION = """
CREATE TYPE decision AS (
    id bigint, booking_id varchar, user_id integer, quantity integer, created_at timestamptz,
    queue_seq bigint, prev varchar, status varchar, reason varchar, promoted boolean,
    seats_left integer, waitlist_left integer
)
"""
# In dependency order; the two callers are replaced after them.
STEPS = (
    "place_in_line",
    "event_after",
    "take_batch",
    "decide_cancellations",
    "decide_waitlist_past",
    "decide_promotions",
    "decide_requests",
    "decide_oversized_waitlist",
    "apply_decisions",
    "move_line",
    "log_decisions",
    "settle_decisions",
)
REPLACED = ("process_event_queue", "promote_waitlist", "waitlist_violations")
SIGNATURES = {
    "process_event_queue": "process_event_queue(integer, integer, text)",
    "promote_waitlist": "promote_waitlist(integer, text)",
    "waitlist_violations": "waitlist_violations()",
}


def _install(function: str, version: str) -> None:
    op.execute((SQL / function / f"{version}.sql").read_text())


def upgrade() -> None:
    op.execute(DECISION)
    # waitlist_head takes the event row (it passes over requests the event can never hold):
    # a new signature, so the old one is dropped.
    op.execute("DROP FUNCTION waitlist_head(integer, integer, integer)")
    _install("waitlist_head", "0008")
    for function in STEPS:
        _install(function, "0008")
    for function in REPLACED:
        op.execute(f"DROP FUNCTION {SIGNATURES[function]}")
        _install(function, "0008")


def downgrade() -> None:
    for function in REPLACED:
        op.execute(f"DROP FUNCTION {SIGNATURES[function]}")
        _install(function, "0007")
    for function in reversed(STEPS):
        op.execute(f"DROP FUNCTION {function}")
    op.execute("DROP FUNCTION waitlist_head(events, integer, integer)")
    _install("waitlist_head", "0007")
    op.execute("DROP TYPE decision")
