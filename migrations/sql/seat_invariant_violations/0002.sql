-- seat_invariant_violations, as migration 0002 installs it.
-- Events where available_seats + confirmed seats <> capacity; empty when the invariant holds.
CREATE OR REPLACE FUNCTION seat_invariant_violations()
RETURNS TABLE (event_id integer, seat_capacity integer, available_seats integer,
               confirmed_seats bigint)
LANGUAGE sql STABLE AS $$
    SELECT e.id, e.seat_capacity, e.available_seats, coalesce(c.seats, 0)
    FROM events e
    LEFT JOIN (SELECT b.event_id, sum(b.quantity) AS seats FROM bookings b
               WHERE b.status = 'confirmed' GROUP BY b.event_id) c ON c.event_id = e.id
    WHERE e.available_seats + coalesce(c.seats, 0) <> e.seat_capacity
    ORDER BY e.id;
$$;
