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

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH_ORDER = (
    """            ELSIF v_seats + r.quantity > ev.max_seats_per_user THEN
                v_status[v_n] := 'rejected';
                v_reason[v_n] := 'limit_exceeded';
            ELSIF r.quantity > v_available THEN
                v_status[v_n] := 'rejected';
                v_reason[v_n] := 'sold_out';
""",
    """            ELSIF r.quantity > v_available THEN
                v_status[v_n] := 'rejected';
                v_reason[v_n] := 'sold_out';
            ELSIF v_seats + r.quantity > ev.max_seats_per_user THEN
                v_status[v_n] := 'rejected';
                v_reason[v_n] := 'limit_exceeded';
""",
)
SINGLE_ORDER = (
    """    ELSIF v_held + p_quantity > ev.max_seats_per_user THEN
        v_reason := 'limit_exceeded';
    ELSIF ev.available_seats < p_quantity THEN
        v_reason := 'sold_out';
""",
    """    ELSIF ev.available_seats < p_quantity THEN
        v_reason := 'sold_out';
    ELSIF v_held + p_quantity > ev.max_seats_per_user THEN
        v_reason := 'limit_exceeded';
""",
)


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EVENT_LOCK = ("FROM events e WHERE e.id = p_event_id FOR UPDATE;",
              "FROM events e WHERE e.id = p_event_id FOR NO KEY UPDATE;")  # fmt: skip


def _swap(sql: str, *changes: tuple[str, str]) -> str:
    for old, new in changes:
        assert sql.count(old) == 1, "the procedure no longer reads as expected"
        sql = sql.replace(old, new)
    return sql


DROP_BATCH = "DROP FUNCTION IF EXISTS process_event_queue(integer, integer, text)"


def upgrade() -> None:
    op.execute(DROP_BATCH)
    batch = _load("0003_faster_batch_decider").PROCESS_EVENT_QUEUE
    op.execute(_swap(batch, BATCH_ORDER, EVENT_LOCK))
    op.execute(_swap(_load("0002_procedures").CREATE_BOOKING, SINGLE_ORDER, EVENT_LOCK))


def downgrade() -> None:
    op.execute(DROP_BATCH)
    op.execute(_load("0003_faster_batch_decider").PROCESS_EVENT_QUEUE)
    op.execute(_load("0002_procedures").CREATE_BOOKING)
