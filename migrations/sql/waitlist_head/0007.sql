-- waitlist_head, as migration 0007 installs it: the waitlisted requests of an event that p_seats
-- seats confirm under the head-of-line rule (docs/API.md, "Waiting room"): in arrival order,
-- while the running total fits, stopping at the first that does not (the head waits; nobody
-- behind it is taken). A request whose owner asked to leave is passed over: the decider
-- cancels it. At most p_limit rows, and never more than p_seats (each takes a seat at least),
-- so an event whose seats are all taken reads nothing. seats_left: the seats left after each.
-- Shared by process_event_queue (after its cancellations) and promote_waitlist (capacity).
CREATE FUNCTION waitlist_head(p_event_id integer, p_seats integer, p_limit integer)
RETURNS TABLE (id bigint, booking_id varchar, user_id integer, quantity integer,
               created_at timestamptz, queue_seq bigint, seats_left integer)
LANGUAGE sql STABLE AS $$
    SELECT h.id, h.booking_id, h.user_id, h.quantity, h.created_at, h.queue_seq,
           p_seats - h.taken
    FROM (
        SELECT w.*, CAST(sum(w.quantity) OVER (ORDER BY w.queue_seq) AS integer) AS taken
        FROM (
            SELECT b.id, b.booking_id, b.user_id, b.quantity, b.created_at, b.queue_seq
            FROM bookings b
            WHERE b.event_id = p_event_id AND b.status = 'waitlisted'
              AND b.cancel_requested_at IS NULL
            ORDER BY b.queue_seq LIMIT greatest(least(p_limit, p_seats), 0)
        ) w
    ) h
    WHERE h.taken <= p_seats
    ORDER BY h.queue_seq
$$;
