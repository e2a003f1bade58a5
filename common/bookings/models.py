from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    String,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from common.db import Base, TimestampMixin

STATUSES = ("pending", "waitlisted", "held", "confirmed", "rejected", "cancelled", "expired")
# A request still in its event's line: it has a queuePosition (common/bookings/line.py).
IN_LINE = ("pending", "waitlisted")
REASONS = ("sold_out", "limit_exceeded", "event_past", "capacity_lowered")
# A booking whose seats are taken: what the seat invariant counts against the capacity.
TAKING = ("held", "confirmed")


class Booking(TimestampMixin, Base):
    __tablename__ = "bookings"
    __allow_unmapped__ = True  # queue_position, below, is no column
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'waitlisted', 'held', 'confirmed', 'rejected', 'cancelled',"
            " 'expired')",
            name="status",
        ),
        CheckConstraint("quantity > 0", name="quantity"),
        CheckConstraint("(status = 'rejected') = (reason IS NOT NULL)", name="reason_iff_rejected"),
        UniqueConstraint("user_id", "idempotency_key", name="uq_bookings_user_idempotency_key"),
        # Each index serves a query named in docs/DATABASE-SCHEMA.md; every index costs every write.
        Index("idx_bookings_user_id", "user_id"),
        # An event's bookings in order (admin list, CSV export), its live bookings, FK cascade.
        Index("idx_bookings_event_id_id", "event_id", "id"),
        # The worker drains an event's queue in arrival order through this index.
        Index(
            "idx_bookings_pending", "event_id", "queue_seq", postgresql_where="status = 'pending'"
        ),
        # The waitlist in arrival order: promotion reads its head.
        Index(
            "idx_bookings_waitlisted",
            "event_id",
            "queue_seq",
            postgresql_where="status = 'waitlisted'",
        ),
        Index(
            "idx_bookings_cancel_requested",
            "event_id",
            "id",
            postgresql_where=(
                "status IN ('pending', 'waitlisted', 'confirmed', 'held')"
                " AND cancel_requested_at IS NOT NULL"
            ),
        ),
        # The seats a user holds or waits for (per-user limit), in both deciders.
        Index(
            "idx_bookings_held_user",
            "event_id",
            "user_id",
            postgresql_where="status IN ('confirmed', 'held', 'waitlisted')",
        ),
        # Holds by their end: the expiry step, the next expiry to schedule, the sweeper.
        Index(
            "idx_bookings_held_expiry",
            "event_id",
            "expires_at",
            postgresql_where="status = 'held'",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    booking_id: Mapped[str] = mapped_column(String(50), unique=True, nullable=False)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="RESTRICT"), nullable=False
    )
    event_id: Mapped[int] = mapped_column(
        ForeignKey("events.id", ondelete="CASCADE"), nullable=False
    )
    quantity: Mapped[int] = mapped_column(nullable=False, server_default="1")
    status: Mapped[str] = mapped_column(String(20), nullable=False, server_default="pending")
    reason: Mapped[str | None] = mapped_column(String(32))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When a held booking expires unless confirmed (its event's hold_seconds after the decision).
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The request's number in its event's line, 1, 2, 3, ... in arrival order, given by the
    # database (trigger assign_queue_seq); never set it here.
    queue_seq: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    # Not stored: the place in line as of the read that loaded the booking with its event's
    # cursor (common/bookings/line.py); None for a booking out of the line.
    queue_position: int | None = None


class BookingLog(Base):
    __tablename__ = "booking_logs"
    __table_args__ = (Index("idx_booking_logs_booking_id", "booking_id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    booking_id: Mapped[str] = mapped_column(String(50), nullable=False)
    action: Mapped[str] = mapped_column(String(30), nullable=False)
    user_id: Mapped[int | None] = mapped_column()
    event_id: Mapped[int | None] = mapped_column()
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    timestamp: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
