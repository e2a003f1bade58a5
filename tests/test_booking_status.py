"""The status rules a waiting request relies on (common/bookings/status.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from common.bookings.models import Booking
from common.bookings.status import apply_decision, is_settled

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status", "cancel_requested_at", "settled"),
    [
        ("pending", None, False),
        ("waitlisted", None, True),  # nothing for a worker to do until seats come back
        ("waitlisted", NOW, False),  # a worker has yet to take it out of the line
        ("confirmed", None, True),
        ("confirmed", NOW, False),  # a worker has yet to free the seats
        ("rejected", None, True),
        ("cancelled", NOW, True),
    ],
)
def test_is_settled(status: str, cancel_requested_at: datetime | None, settled: bool) -> None:
    booking = Booking(status=status, cancel_requested_at=cancel_requested_at)
    assert is_settled(booking) is settled


def test_apply_decision_reads_a_booking_status_message() -> None:
    booking = Booking(status="pending")
    message = {"status": "rejected", "reason": "sold_out", "decidedAt": NOW.isoformat()}
    assert apply_decision(booking, message) is booking
    assert (booking.status, booking.reason, booking.decided_at) == ("rejected", "sold_out", NOW)
    assert is_settled(booking)


def test_apply_decision_reads_a_place_in_line() -> None:
    booking = Booking(status="pending")
    message = {
        "status": "waitlisted", "reason": None, "decidedAt": None, "timestamp": NOW.isoformat(),
        "queueSeq": 7, "queuePosition": 3, "promoted": False,
    }  # fmt: skip
    apply_decision(booking, message)
    assert (booking.status, booking.queue_seq, booking.queue_position) == ("waitlisted", 7, 3)
    assert booking.decided_at is None  # waiting for seats is no decision yet
    assert is_settled(booking)
