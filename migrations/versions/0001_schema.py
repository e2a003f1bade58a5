"""Schema: users, events, bookings (with the booking pipeline columns) and booking_logs.

Revision ID: 0001
Revises:
Create Date: 2026-11-22 00:41:12.253266
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "booking_logs",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("booking_id", sa.String(length=50), nullable=False),
        sa.Column("action", sa.String(length=30), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("event_id", sa.Integer(), nullable=True),
        sa.Column("details", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "timestamp", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_booking_logs")),
    )
    op.create_index("idx_booking_logs_action", "booking_logs", ["action"], unique=False)
    op.create_index("idx_booking_logs_booking_id", "booking_logs", ["booking_id"], unique=False)
    op.create_index("idx_booking_logs_timestamp", "booking_logs", ["timestamp"], unique=False)
    op.create_index(
        "idx_booking_logs_user_event", "booking_logs", ["user_id", "event_id"], unique=False
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=20), server_default="user", nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("role IN ('user', 'admin')", name=op.f("ck_users_role")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
    )
    op.create_index("idx_users_role", "users", ["role"], unique=False)
    op.create_index(
        "uq_users_email_lower", "users", [sa.literal_column("lower(email)")], unique=True
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("venue", sa.String(length=255), nullable=True),
        sa.Column("event_date", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seat_capacity", sa.Integer(), nullable=False),
        sa.Column("available_seats", sa.Integer(), nullable=False),
        sa.Column("max_seats_per_user", sa.Integer(), server_default="10", nullable=False),
        sa.Column("version", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("image_url", sa.Text(), nullable=True),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "available_seats >= 0 AND available_seats <= seat_capacity",
            name=op.f("ck_events_available_seats"),
        ),
        sa.CheckConstraint("max_seats_per_user > 0", name=op.f("ck_events_max_seats_per_user")),
        sa.CheckConstraint("seat_capacity > 0", name=op.f("ck_events_seat_capacity")),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_events_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index(
        "idx_events_available_seats",
        "events",
        ["available_seats"],
        unique=False,
        postgresql_where="available_seats > 0",
    )
    op.create_index("idx_events_created_by", "events", ["created_by"], unique=False)
    op.create_index("idx_events_event_date", "events", ["event_date"], unique=False)
    op.create_table(
        "bookings",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("booking_id", sa.String(length=50), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("quantity", sa.Integer(), server_default="1", nullable=False),
        sa.Column("status", sa.String(length=20), server_default="pending", nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "(status = 'rejected') = (reason IS NOT NULL)",
            name=op.f("ck_bookings_reason_iff_rejected"),
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'confirmed', 'rejected', 'cancelled')",
            name=op.f("ck_bookings_status"),
        ),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_bookings_quantity")),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["events.id"],
            name=op.f("fk_bookings_event_id_events"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_bookings_user_id_users"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bookings")),
        sa.UniqueConstraint("booking_id", name=op.f("uq_bookings_booking_id")),
        sa.UniqueConstraint("user_id", "idempotency_key", name="uq_bookings_user_idempotency_key"),
    )
    op.create_index(
        "idx_bookings_cancel_requested",
        "bookings",
        ["event_id", "id"],
        unique=False,
        postgresql_where="status IN ('pending', 'confirmed') AND cancel_requested_at IS NOT NULL",
    )
    op.create_index(
        "idx_bookings_confirmed_user",
        "bookings",
        ["event_id", "user_id"],
        unique=False,
        postgresql_where="status = 'confirmed'",
    )
    op.create_index("idx_bookings_created_at", "bookings", ["created_at"], unique=False)
    op.create_index("idx_bookings_event_id", "bookings", ["event_id"], unique=False)
    op.create_index(
        "idx_bookings_pending",
        "bookings",
        ["event_id", "id"],
        unique=False,
        postgresql_where="status = 'pending'",
    )
    op.create_index("idx_bookings_status", "bookings", ["status"], unique=False)
    op.create_index("idx_bookings_user_id", "bookings", ["user_id"], unique=False)


def downgrade() -> None:
    op.drop_index("idx_bookings_user_id", table_name="bookings")
    op.drop_index("idx_bookings_status", table_name="bookings")
    op.drop_index(
        "idx_bookings_pending", table_name="bookings", postgresql_where="status = 'pending'"
    )
    op.drop_index("idx_bookings_event_id", table_name="bookings")
    op.drop_index("idx_bookings_created_at", table_name="bookings")
    op.drop_index(
        "idx_bookings_confirmed_user",
        table_name="bookings",
        postgresql_where="status = 'confirmed'",
    )
    op.drop_index(
        "idx_bookings_cancel_requested",
        table_name="bookings",
        postgresql_where="status IN ('pending', 'confirmed') AND cancel_requested_at IS NOT NULL",
    )
    op.drop_table("bookings")
    op.drop_index("idx_events_event_date", table_name="events")
    op.drop_index("idx_events_created_by", table_name="events")
    op.drop_index(
        "idx_events_available_seats", table_name="events", postgresql_where="available_seats > 0"
    )
    op.drop_table("events")
    op.drop_index("uq_users_email_lower", table_name="users")
    op.drop_index("idx_users_role", table_name="users")
    op.drop_table("users")
    op.drop_index("idx_booking_logs_user_event", table_name="booking_logs")
    op.drop_index("idx_booking_logs_timestamp", table_name="booking_logs")
    op.drop_index("idx_booking_logs_booking_id", table_name="booking_logs")
    op.drop_index("idx_booking_logs_action", table_name="booking_logs")
    op.drop_table("booking_logs")
