from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, DateTime, Index, String, func
from sqlalchemy.orm import Mapped, mapped_column

from common.db import Base

OUTCOMES = ("confirmed", "already_confirmed", "refund_required")


class PaymentCallback(Base):
    """A verified payment callback, kept by its ``webhook-id``: a redelivery finds it and gets
    the same answer; ``refund_required`` rows are the payments to give back (the hold they paid
    for had expired or was gone)."""

    __tablename__ = "payment_callbacks"
    __table_args__ = (
        CheckConstraint(
            "outcome IN ('confirmed', 'already_confirmed', 'refund_required')", name="outcome"
        ),
        # The refunds to make, oldest first (docs/RELIABILITY.md, "Holds").
        Index(
            "idx_payment_callbacks_refund",
            "received_at",
            postgresql_where="outcome = 'refund_required'",
        ),
    )

    webhook_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    booking_id: Mapped[str] = mapped_column(String(50), nullable=False)
    payment_reference: Mapped[str] = mapped_column(String(255), nullable=False)
    outcome: Mapped[str] = mapped_column(String(30), nullable=False)
    # Why a refund is due: unknown_booking, hold_expired, booking_cancelled, booking_rejected,
    # not_held.
    reason: Mapped[str | None] = mapped_column(String(40))
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
