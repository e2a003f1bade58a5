from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    false,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from common.db import Base, TimestampMixin


class Event(TimestampMixin, Base):
    __tablename__ = "events"
    __table_args__ = (
        CheckConstraint("seat_capacity > 0", name="seat_capacity"),
        CheckConstraint(
            "available_seats >= 0 AND available_seats <= seat_capacity", name="available_seats"
        ),
        CheckConstraint("max_seats_per_user > 0", name="max_seats_per_user"),
        CheckConstraint("waitlist_length >= 0", name="waitlist_length"),
        CheckConstraint("hold_seconds IS NULL OR hold_seconds > 0", name="hold_seconds"),
        Index("idx_events_event_date", "event_date"),
        Index(
            "idx_events_available_seats",
            "available_seats",
            postgresql_where="available_seats > 0",
        ),
        Index("idx_events_created_by", "created_by"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    venue: Mapped[str | None] = mapped_column(String(255))
    event_date: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    seat_capacity: Mapped[int] = mapped_column(nullable=False)
    available_seats: Mapped[int] = mapped_column(nullable=False)
    max_seats_per_user: Mapped[int] = mapped_column(nullable=False, server_default="10")
    version: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    image_url: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    waitlist_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=false())
    # Accepted requests are held this long for payment, then expire (None: confirmed at once).
    hold_seconds: Mapped[int | None] = mapped_column(Integer)
    # The line (pending and waitlisted requests, common/bookings/line.py), kept by the decider:
    # every queue_seq up to line_through has left it; line_gone holds those above that left out
    # of turn, ascending.
    line_through: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    line_gone: Mapped[list[int]] = mapped_column(
        ARRAY(BigInteger), nullable=False, server_default="{}"
    )
    waitlist_length: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )


class EventLine(Base):
    """An event's arrival counter: the last queue_seq given (trigger assign_queue_seq). A row of
    its own so that numbering a request never waits for the decider's lock on the event."""

    __tablename__ = "event_lines"

    event_id: Mapped[int] = mapped_column(
        ForeignKey("events.id", ondelete="CASCADE"), primary_key=True
    )
    arrived: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
