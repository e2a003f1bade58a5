"""The booking rules have one home, booking_verdict (migrations/sql/booking_verdict/): one table of
cases, run through the function itself, both procedures that decide a booking, the batched
intake and the API's seat snapshots (which refuse from memory)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from api.seats import SeatSnapshots
from common.bookings import procedures
from common.bookings.intake import IntakeRequest, write_batch
from common.bookings.models import Booking
from common.bookings.schemas import BookingCreate
from common.bookings.service import new_booking_id
from common.errors import EventPast, SoldOut, ValidationFailed

# started, seats left, max per user, seats the user holds, quantity asked -> verdict
CASES = [
    pytest.param(False, 5, 4, 0, 2, "confirmed", id="confirmed"),
    pytest.param(False, 2, 4, 2, 2, "confirmed", id="exactly-the-seats-and-the-limit"),
    pytest.param(True, 0, 1, 1, 2, "event_past", id="started-beats-every-other-rule"),
    pytest.param(False, 1, 2, 2, 2, "sold_out", id="sold-out-before-the-limit"),
    pytest.param(False, 10, 4, 3, 2, "limit_exceeded", id="limit"),
]


@pytest.fixture
def situation(db, make_user, make_event):
    """An event with the seats left and the limit of a case, and a user holding some of them."""

    def make(started: bool, seats_left: int, max_per_user: int, held: int):
        user = make_user()
        event = make_event(
            capacity=seats_left + held,
            available=seats_left,
            max_per_user=max_per_user,
            starts_in=timedelta(hours=-1 if started else 24),
        )
        if held:
            db.add(
                Booking(
                    booking_id="bk_held",
                    user_id=user.id,
                    event_id=event.id,
                    quantity=held,
                    status="confirmed",
                    decided_at=datetime.now(UTC),
                )
            )
            db.commit()
        return user, event

    return make


@pytest.mark.parametrize(
    ("started", "seats_left", "max_per_user", "held", "quantity", "verdict"), CASES
)
def test_the_function(db, situation, started, seats_left, max_per_user, held, quantity, verdict):
    _, event = situation(started, seats_left, max_per_user, held)
    asked = text(
        "SELECT booking_verdict(e, :quantity, e.available_seats, :held) FROM events e"
        " WHERE e.id = :id"
    )
    assert db.scalar(asked, {"quantity": quantity, "held": held, "id": event.id}) == verdict


@pytest.mark.parametrize(
    ("started", "seats_left", "max_per_user", "held", "quantity", "verdict"), CASES
)
def test_the_batch_decider(
    db, situation, started, seats_left, max_per_user, held, quantity, verdict
):
    user, event = situation(started, seats_left, max_per_user, held)
    db.add(Booking(booking_id="bk_asked", user_id=user.id, event_id=event.id, quantity=quantity))
    db.commit()
    [decision] = procedures.process_event_queue(db, event.id, 10, "test")
    db.commit()
    assert (decision.reason or decision.status) == verdict


@pytest.mark.parametrize(
    ("started", "seats_left", "max_per_user", "held", "quantity", "verdict"), CASES
)
def test_the_single_booking_procedure(
    db, situation, started, seats_left, max_per_user, held, quantity, verdict
):
    user, event = situation(started, seats_left, max_per_user, held)
    outcome = procedures.create_booking(db, user.id, event.id, "bk_asked", quantity)
    db.commit()
    assert outcome == verdict


# Intake asks the rules with no seats held yet (p_held = 0): the batched intake must refuse what
# the function refuses, and a seat snapshot may refuse from memory only what it calls sold_out.
INTAKE_ERRORS = {"event_past": EventPast, "sold_out": SoldOut, "limit_exceeded": ValidationFailed}


def _intake_verdict(db, event_id: int, quantity: int) -> str:
    asked = text(
        "SELECT booking_verdict(e, :quantity, e.available_seats, 0) FROM events e WHERE e.id = :id"
    )
    return db.scalar(asked, {"quantity": quantity, "id": event_id})


@pytest.mark.parametrize(
    ("started", "seats_left", "max_per_user", "held", "quantity", "verdict"), CASES
)
def test_the_batched_intake(
    db, session_factory, situation, started, seats_left, max_per_user, held, quantity, verdict
):
    user, event = situation(started, seats_left, max_per_user, held)
    expected = _intake_verdict(db, event.id, quantity)
    request = IntakeRequest(
        user.id, BookingCreate(eventId=event.id, quantity=quantity), new_booking_id()
    )
    [outcome], _ = write_batch(session_factory, [request], lambda _: None, None)
    if expected == "confirmed":
        assert isinstance(outcome, tuple) and outcome[1] is True
    else:
        assert type(outcome) is INTAKE_ERRORS[expected]


@pytest.mark.parametrize(
    ("started", "seats_left", "max_per_user", "held", "quantity", "verdict"), CASES
)
def test_the_seat_snapshot(
    db, situation, started, seats_left, max_per_user, held, quantity, verdict
):
    _, event = situation(started, seats_left, max_per_user, held)
    snapshots = SeatSnapshots(factory=None, max_age=60)  # type: ignore[arg-type]
    starts_at = event.event_date.timestamp()
    snapshots.observe(
        event.id, seats_left, event.version, max_per_user, starts_at, seen=time.monotonic()
    )
    refused = snapshots.sold_out(event.id, quantity) is not None
    assert refused == (_intake_verdict(db, event.id, quantity) == "sold_out")
