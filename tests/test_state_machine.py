"""A hypothesis state machine of book / cancel / capacity change across users and events.

Every step goes through the API and a real worker. The model predicts each decision (requests
are sent one at a time, so arrival order is the step order) and the seat invariant is checked
in the database after every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import text

WAIT = {"Prefer": "wait=25"}
MAX_PER_USER = 4


@dataclass
class Model:
    capacity: int
    available: int
    held: dict[int, int] = field(default_factory=dict)


class BookingMachine(RuleBasedStateMachine):
    ctx: dict = {}
    confirmed = Bundle("confirmed")

    def __init__(self) -> None:
        super().__init__()
        c = self.ctx
        self.client, self.db = c["client"], c["db"]
        self.admin_headers = c["auth"](c["make_user"]("admin"))
        self.users = [c["make_user"]() for _ in range(3)]
        self.events: dict[int, Model] = {}
        for capacity in (3, 6):
            event = c["make_event"](capacity=capacity, max_per_user=MAX_PER_USER)
            self.events[event.id] = Model(capacity, capacity)

    @rule(
        target=confirmed,
        user=st.integers(0, 2),
        event_index=st.integers(0, 1),
        quantity=st.integers(1, 3),
    )
    def book(self, user, event_index, quantity):
        event_id = list(self.events)[event_index]
        model = self.events[event_id]
        owner = self.users[user]
        held = model.held.get(owner.id, 0)
        response = self.client.post(
            "/api/bookings",
            json={"eventId": event_id, "quantity": quantity},
            headers={**self.ctx["auth"](owner), **WAIT},
        )
        if quantity > model.available:
            assert response.status_code == 409
            assert response.json()["error"]["code"] == "SOLD_OUT"
        elif held + quantity > MAX_PER_USER:
            assert response.status_code == 409
            assert response.json()["error"]["code"] == "LIMIT_EXCEEDED"
        else:
            assert response.status_code == 201, response.text
            model.available -= quantity
            model.held[owner.id] = held + quantity
            return (response.json()["data"]["bookingId"], owner, event_id, quantity)
        return None

    @rule(booking=consumes(confirmed))
    def cancel(self, booking):
        if booking is None:
            return
        booking_id, owner, event_id, quantity = booking
        response = self.client.delete(
            f"/api/bookings/{booking_id}", headers={**self.ctx["auth"](owner), **WAIT}
        )
        assert response.status_code == 200, response.text
        assert response.json()["data"]["status"] == "cancelled"
        model = self.events[event_id]
        model.available += quantity
        model.held[owner.id] -= quantity

    @rule(event_index=st.integers(0, 1), capacity=st.integers(1, 8))
    def change_capacity(self, event_index, capacity):
        event_id = list(self.events)[event_index]
        model = self.events[event_id]
        booked = model.capacity - model.available
        response = self.client.put(
            f"/api/events/{event_id}", json={"seatCapacity": capacity}, headers=self.admin_headers
        )
        if capacity < booked:
            assert response.status_code == 409
            return
        assert response.status_code == 200
        model.capacity, model.available = capacity, capacity - booked
        assert response.json()["data"]["availableSeats"] == model.available

    @invariant()
    def seats_add_up(self):
        rows = dict(
            self.db.execute(
                text("SELECT id, available_seats FROM events WHERE id = ANY(:ids)"),
                {"ids": list(self.events)},
            ).all()
        )
        assert rows == {eid: m.available for eid, m in self.events.items()}
        assert self.db.execute(text("SELECT * FROM seat_invariant_violations()")).all() == []
        self.db.commit()


def test_booking_state_machine(client, worker, db, make_user, make_event, auth):
    BookingMachine.ctx = {
        "client": client,
        "db": db,
        "make_user": make_user,
        "make_event": make_event,
        "auth": auth,
    }
    run_state_machine_as_test(
        BookingMachine,
        settings=settings(
            max_examples=10,
            stateful_step_count=12,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
