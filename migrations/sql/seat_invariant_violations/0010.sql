-- seat_invariant_violations, as migration 0010 installs it: 0002 with holds. Events where
-- available_seats + confirmed seats + held seats <> capacity; empty when the invariant holds.
CREATE FUNCTION seat_invariant_violations()
RETURNS TABLE (event_id integer, seat_capacity integer, available_seats integer,
               confirmed_seats bigint, held_seats bigint)
LANGUAGE sql STABLE AS $$
    SELECT e.id, e.seat_capacity, e.available_seats, coalesce(c.confirmed, 0),
           coalesce(c.held, 0)
    FROM events e
    LEFT JOIN (SELECT b.event_id,
                      sum(b.quantity) FILTER (WHERE b.status = 'confirmed') AS confirmed,
                      sum(b.quantity) FILTER (WHERE b.status = 'held') AS held
               FROM bookings b WHERE b.status IN ('confirmed', 'held')
               GROUP BY b.event_id) c ON c.event_id = e.id
    WHERE e.available_seats + coalesce(c.confirmed, 0) + coalesce(c.held, 0) <> e.seat_capacity
    ORDER BY e.id;
$$;
