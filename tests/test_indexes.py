"""Every index on bookings and booking_logs earns its place: a query of ours can use it, and no
other index is there (docs/DATABASE-SCHEMA.md shows the plans on a loaded table). The queries
are those of the procedures and services, with literal values."""

from __future__ import annotations

from sqlalchemy import text

# index -> a query that uses it (the first one named in the schema document).
USES = {
    "idx_bookings_pending": (
        "SELECT b.id FROM bookings b WHERE b.event_id = 1 AND b.status = 'pending'"
        " AND b.cancel_requested_at IS NULL ORDER BY b.queue_seq LIMIT 500"
    ),
    "idx_bookings_waitlisted": (
        "SELECT b.id FROM bookings b WHERE b.event_id = 1 AND b.status = 'waitlisted'"
        " AND b.cancel_requested_at IS NULL ORDER BY b.queue_seq LIMIT 5"
    ),
    "idx_bookings_cancel_requested": (
        "SELECT b.id FROM bookings b WHERE b.event_id = 1 AND b.cancel_requested_at IS NOT NULL"
        " AND b.status IN ('pending', 'waitlisted', 'confirmed', 'held') ORDER BY b.id LIMIT 500"
    ),
    "idx_bookings_held_expiry": (
        "SELECT b.id FROM bookings b WHERE b.event_id = 1 AND b.status = 'held'"
        " AND b.expires_at <= now() AND b.cancel_requested_at IS NULL"
        " ORDER BY b.expires_at, b.id LIMIT 500"
    ),
    "idx_bookings_held_user": (
        "SELECT coalesce(sum(b.quantity), 0) FROM bookings b"
        " WHERE b.event_id = 1 AND b.user_id = 1"
        " AND b.status IN ('confirmed', 'held', 'waitlisted')"
    ),
    "idx_bookings_event_id_id": "SELECT * FROM bookings WHERE event_id = 1 ORDER BY id LIMIT 50",
    "idx_bookings_user_id": (
        "SELECT 1 FROM bookings p WHERE p.user_id = 1 AND p.status = 'pending' LIMIT 5"
    ),
    "uq_bookings_booking_id": "SELECT * FROM bookings WHERE booking_id = 'bk_1'",
    "uq_bookings_user_idempotency_key": (
        "SELECT * FROM bookings WHERE user_id = 1 AND idempotency_key = 'k'"
    ),
    "pk_bookings": "SELECT * FROM bookings WHERE id = 1",
    "idx_booking_logs_booking_id": (
        "SELECT * FROM booking_logs WHERE booking_id = 'bk_1' ORDER BY id"
    ),
    "pk_booking_logs": "SELECT * FROM booking_logs WHERE id = 1",
}


def test_no_index_without_a_query(engine):
    with engine.connect() as conn:
        indexes = conn.scalars(
            text(
                "SELECT indexname FROM pg_indexes"
                " WHERE tablename IN ('bookings', 'booking_logs') ORDER BY 1"
            )
        ).all()
    assert sorted(indexes) == sorted(USES)


# A table like a busy day's, inside the test's transaction (rolled back): 100 events of 200
# bookings in arrival order, most decided, some pending, some cancellations asked for.
LOAD = """
INSERT INTO users (id, email, name, password_hash)
SELECT g, 'u' || g || '@example.com', 'U', 'x' FROM generate_series(1, 500) g;
INSERT INTO events (id, name, event_date, seat_capacity, available_seats)
SELECT g, 'E', now() + interval '1 day', 100000, 100000 FROM generate_series(1, 100) g;
INSERT INTO bookings (booking_id, user_id, event_id, status, reason, idempotency_key,
                      cancel_requested_at)
SELECT 'bk_' || g, 1 + g % 500, 1 + g % 100,
       CASE WHEN g > 19000 THEN 'pending' WHEN g > 18500 THEN 'waitlisted'
            WHEN g % 4 = 0 THEN 'rejected' WHEN g % 7 = 0 THEN 'held' ELSE 'confirmed' END,
       CASE WHEN g <= 18500 AND g % 4 = 0 THEN 'sold_out' END, 'k' || g,
       CASE WHEN g <= 19000 AND g % 97 = 1 THEN now() END
FROM generate_series(1, 20000) g;
INSERT INTO booking_logs (booking_id, action, user_id, event_id)
SELECT booking_id, status, user_id, event_id FROM bookings
WHERE status NOT IN ('pending', 'waitlisted');
ANALYZE users, events, bookings, booking_logs;
"""


def test_each_query_uses_its_index(engine):
    plans = {}
    with engine.connect() as conn, conn.begin():
        conn.execute(text(LOAD))
        for index, query in USES.items():
            plans[index] = "\n".join(conn.scalars(text(f"EXPLAIN {query}")))
        conn.rollback()
    for index, plan in plans.items():
        assert f" on {index}" in plan or f" using {index}" in plan, plan
