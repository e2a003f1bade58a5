from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, DateTime, ForeignKey, Index, String, Text, func
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
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
