"""The waiting room: each event's requests numbered in arrival order, and an optional waitlist.

- ``events.waitlist_enabled``: a request that would be rejected ``sold_out`` is ``waitlisted``
  instead (booking_verdict 0007) and confirmed later, in arrival order, when seats come back.
- ``bookings.queue_seq``: the request's number in its event's line (1, 2, 3, ...), given by the
  BEFORE INSERT trigger ``assign_queue_seq`` from ``event_lines.arrived``, a counter row per event
  (opened by the AFTER INSERT trigger ``open_event_line`` of events). The decider reads an
  event's queue in this order.
- The line of an event is its ``pending`` and ``waitlisted`` requests. ``events.line_through``
  is a cursor: every request numbered up to it has left the line; ``events.line_gone`` holds the
  numbers above it that left out of turn (a cancellation, a rejection behind the waitlist), in
  ascending order. A request's place in line is then one subtraction and a count in a short list:
  ``queue_seq - line_through - (numbers in line_gone below queue_seq)``. ``waitlist_length``
  counts the event's waitlisted requests. The decider keeps all three as it decides.

Existing bookings are numbered by id within their event; the cursor is set from them.

The decider (process_event_queue 0007) keeps the line: it promotes from the waitlist after its
cancellations, rejects the waitlist once the event has started and waitlists pending requests
the verdict says to, moving the cursor with line_after (the shared piece) in each batch.
promote_waitlist does the same promotion for the API when an edit leaves seats free,
create_booking moves the cursor past the rows it inserts decided, and waitlist_violations is
`ebs check`'s look at the waitlist. ``idx_bookings_confirmed_user`` becomes
``idx_bookings_held_user``: the per-user limit counts waitlisted seats too.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQL = Path(__file__).parents[1] / "sql"
STATUSES_0001 = "status IN ('pending', 'confirmed', 'rejected', 'cancelled')"
STATUSES = "status IN ('pending', 'waitlisted', 'confirmed', 'rejected', 'cancelled')"
CANCEL_0001 = "status IN ('pending', 'confirmed') AND cancel_requested_at IS NOT NULL"
CANCEL = "status IN ('pending', 'waitlisted', 'confirmed') AND cancel_requested_at IS NOT NULL"
HELD = "status IN ('confirmed', 'waitlisted')"
DROP_BATCH = "DROP FUNCTION IF EXISTS process_event_queue(integer, integer, text)"
# The cursor helper, the waitlist's head, the capacity promotion, the check: in dependency order.
NEW_FUNCTIONS = ("line_after", "waitlist_head", "promote_waitlist", "waitlist_violations")

NUMBER_EXISTING = """
UPDATE bookings b SET queue_seq = n.seq
FROM (SELECT id, row_number() OVER (PARTITION BY event_id ORDER BY id) AS seq FROM bookings) n
WHERE b.id = n.id
"""
OPEN_LINES = """
INSERT INTO event_lines (event_id, arrived)
SELECT e.id, coalesce(max(b.queue_seq), 0) FROM events e LEFT JOIN bookings b ON b.event_id = e.id
GROUP BY e.id
"""
SET_CURSORS = """
UPDATE events e SET line_through = coalesce(
    (SELECT min(b.queue_seq) - 1 FROM bookings b WHERE b.event_id = e.id AND b.status = 'pending'),
    (SELECT l.arrived FROM event_lines l WHERE l.event_id = e.id));
UPDATE events e SET line_gone = coalesce(
    (SELECT array_agg(b.queue_seq ORDER BY b.queue_seq) FROM bookings b
     WHERE b.event_id = e.id AND b.queue_seq > e.line_through AND b.status <> 'pending'),
    '{}')
"""


def _install(function: str, version: str) -> None:
    op.execute((SQL / function / f"{version}.sql").read_text())


def upgrade() -> None:
    op.add_column(
        "events",
        sa.Column("waitlist_enabled", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.add_column(
        "events", sa.Column("line_through", sa.BigInteger(), server_default="0", nullable=False)
    )
    op.add_column(
        "events",
        sa.Column("line_gone", ARRAY(sa.BigInteger()), server_default="{}", nullable=False),
    )
    op.add_column(
        "events", sa.Column("waitlist_length", sa.Integer(), server_default="0", nullable=False)
    )
    op.create_check_constraint(op.f("ck_events_waitlist_length"), "events", "waitlist_length >= 0")
    op.create_table(
        "event_lines",
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("arrived", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["events.id"],
            name=op.f("fk_event_lines_event_id_events"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_event_lines")),
    )
    op.add_column("bookings", sa.Column("queue_seq", sa.BigInteger(), nullable=True))
    op.execute(NUMBER_EXISTING)
    op.execute(OPEN_LINES)
    op.execute(SET_CURSORS)
    op.alter_column("bookings", "queue_seq", nullable=False)

    op.drop_constraint(op.f("ck_bookings_status"), "bookings", type_="check")
    op.create_check_constraint(op.f("ck_bookings_status"), "bookings", STATUSES)
    op.drop_index("idx_bookings_pending", table_name="bookings")
    op.create_index(
        "idx_bookings_pending",
        "bookings",
        ["event_id", "queue_seq"],
        postgresql_where="status = 'pending'",
    )
    op.create_index(
        "idx_bookings_waitlisted",
        "bookings",
        ["event_id", "queue_seq"],
        postgresql_where="status = 'waitlisted'",
    )
    op.drop_index("idx_bookings_cancel_requested", table_name="bookings")
    op.create_index(
        "idx_bookings_cancel_requested", "bookings", ["event_id", "id"], postgresql_where=CANCEL
    )

    _install("open_event_line", "0007")
    op.execute(
        "CREATE TRIGGER events_open_line AFTER INSERT ON events"
        " FOR EACH ROW EXECUTE FUNCTION open_event_line()"
    )
    _install("assign_queue_seq", "0007")
    op.execute(
        "CREATE TRIGGER bookings_queue_seq BEFORE INSERT ON bookings"
        " FOR EACH ROW EXECUTE FUNCTION assign_queue_seq()"
    )
    _install("count_arrivals", "0007")
    op.execute(
        "CREATE TRIGGER bookings_count_arrivals AFTER INSERT ON bookings"
        " REFERENCING NEW TABLE AS arrivals FOR EACH STATEMENT EXECUTE FUNCTION count_arrivals()"
    )
    _install("booking_verdict", "0007")

    # The per-user limit counts a user's confirmed and waitlisted seats: the index covers both.
    op.drop_index("idx_bookings_confirmed_user", table_name="bookings")
    op.create_index(
        "idx_bookings_held_user", "bookings", ["event_id", "user_id"], postgresql_where=HELD
    )
    for function in NEW_FUNCTIONS:
        _install(function, "0007")
    op.execute(DROP_BATCH)
    _install("process_event_queue", "0007")
    _install("create_booking", "0007")


def downgrade() -> None:
    op.execute(DROP_BATCH)
    _install("process_event_queue", "0006")
    _install("create_booking", "0005")
    for function in reversed(NEW_FUNCTIONS):
        op.execute(f"DROP FUNCTION {function}")
    op.drop_index("idx_bookings_held_user", table_name="bookings")
    op.create_index(
        "idx_bookings_confirmed_user",
        "bookings",
        ["event_id", "user_id"],
        postgresql_where="status = 'confirmed'",
    )
    op.execute("DROP TRIGGER bookings_count_arrivals ON bookings")
    op.execute("DROP FUNCTION count_arrivals()")
    op.execute("DROP TRIGGER bookings_queue_seq ON bookings")
    op.execute("DROP FUNCTION assign_queue_seq()")
    op.execute("DROP TRIGGER events_open_line ON events")
    op.execute("DROP FUNCTION open_event_line()")
    op.drop_index("idx_bookings_cancel_requested", table_name="bookings")
    op.create_index(
        "idx_bookings_cancel_requested",
        "bookings",
        ["event_id", "id"],
        postgresql_where=CANCEL_0001,
    )
    op.drop_index("idx_bookings_waitlisted", table_name="bookings")
    op.drop_index("idx_bookings_pending", table_name="bookings")
    op.create_index(
        "idx_bookings_pending",
        "bookings",
        ["event_id", "id"],
        postgresql_where="status = 'pending'",
    )
    # A waitlisted request has no place without the waitlist: it is cancelled, as if withdrawn.
    op.execute(
        "UPDATE bookings SET status = 'cancelled', cancelled_at = now(),"
        " decided_at = coalesce(decided_at, now()) WHERE status = 'waitlisted'"
    )
    op.drop_constraint(op.f("ck_bookings_status"), "bookings", type_="check")
    op.create_check_constraint(op.f("ck_bookings_status"), "bookings", STATUSES_0001)
    op.drop_column("bookings", "queue_seq")
    op.drop_table("event_lines")
    op.drop_constraint(op.f("ck_events_waitlist_length"), "events", type_="check")
    for column in ("waitlist_length", "line_gone", "line_through", "waitlist_enabled"):
        op.drop_column("events", column)
    op.execute("DROP FUNCTION booking_verdict(events, integer, integer, integer)")
    _install("booking_verdict", "0005")
