"""Sample data, as in the seed project: an admin, three users, six events, five bookings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from common.bookings.models import Booking, BookingLog
from common.bookings.service import new_booking_id
from common.events.models import Event
from common.security import hash_password
from common.users.models import User

PASSWORD = "password123"
USERS = [
    ("admin@example.com", "Admin User", "admin"),
    ("john@example.com", "John Doe", "user"),
    ("jane@example.com", "Jane Smith", "user"),
    ("bob@example.com", "Bob Johnson", "user"),
]
# (name, description, venue, days from now, capacity)
EVENTS = [
    (
        "Tech Conference 2025",
        "Annual technology conference with talks on AI, cloud and the web.",
        "Convention Center, Hall A",
        30,
        500,
    ),
    (
        "Music Festival",
        "Three stages of live music from local and international artists.",
        "Riverside Park",
        45,
        2000,
    ),
    (
        "Startup Pitch Night",
        "Early-stage founders pitch to a panel of investors.",
        "Innovation Hub",
        14,
        100,
    ),
    (
        "Photography Workshop",
        "Hands-on workshop on composition and light, cameras provided.",
        "Art Studio 4",
        7,
        20,
    ),
    (
        "Charity Gala Dinner",
        "An evening of dinner and auctions in aid of the children's hospital.",
        "Grand Hotel Ballroom",
        60,
        250,
    ),
    ("Past Meetup", "A meetup that has already taken place.", "Community Hall", -10, 50),
]
# (user email, event index, quantity)
BOOKINGS = [
    ("john@example.com", 0, 1),
    ("john@example.com", 1, 2),
    ("jane@example.com", 0, 1),
    ("jane@example.com", 2, 1),
    ("bob@example.com", 3, 1),
]


def is_seeded(session: Session) -> bool:
    return bool(session.scalar(select(func.count()).select_from(User)))


def seed(session: Session, *, bcrypt_rounds: int) -> dict[str, int]:
    password_hash = hash_password(PASSWORD, bcrypt_rounds)
    users = {
        email: User(email=email, name=name, role=role, password_hash=password_hash)
        for email, name, role in USERS
    }
    session.add_all(users.values())
    session.flush()
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    admin = users["admin@example.com"]
    events = [
        Event(
            name=name,
            description=description,
            venue=venue,
            event_date=now + timedelta(days=days, hours=19 - now.hour),
            seat_capacity=capacity,
            available_seats=capacity,
            created_by=admin.id,
        )
        for name, description, venue, days, capacity in EVENTS
    ]
    session.add_all(events)
    session.flush()
    for email, index, quantity in BOOKINGS:
        event, user = events[index], users[email]
        booking = Booking(
            booking_id=new_booking_id(),
            user_id=user.id,
            event_id=event.id,
            quantity=quantity,
            status="confirmed",
            decided_at=now,
        )
        event.available_seats -= quantity
        event.version += 1
        session.add(booking)
        session.add(
            BookingLog(
                booking_id=booking.booking_id,
                action="confirmed",
                user_id=user.id,
                event_id=event.id,
                details={
                    "quantity": quantity,
                    "seed": True,
                    "seats_remaining": event.available_seats,
                },
            )
        )
    session.flush()
    # The bookings were stored decided: each left its event's line at once (line.py's cursor).
    session.execute(
        text(
            "UPDATE events e SET line_through = l.arrived FROM event_lines l"
            " WHERE l.event_id = e.id AND e.id = ANY(:ids)"
        ),
        {"ids": [event.id for event in events]},
    )
    return {"users": len(users), "events": len(events), "bookings": len(BOOKINGS)}
