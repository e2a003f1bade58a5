-- waitlist_head, as migration 0008 installs it: 0007 taking the event row, so that a request
-- wanting more seats than the event holds is passed over: it can never be met and holds nobody
-- behind it (decide_oversized_waitlist rejects it in the same batch). The waitlisted requests
-- of the event that p_seats seats confirm under the head-of-line rule (docs/API.md, "Waiting
-- room"): in arrival order, while the running total fits, stopping at the first that does not
-- (the head waits; nobody behind it is taken). A request whose owner asked to leave is passed
-- over: the decider cancels it. At most p_limit rows, and never more than p_seats (each takes
-- a seat at least), so an event whose seats are all taken reads nothing. seats_left: the seats
-- left after each. Called by decide_promotions.
CREATE FUNCTION waitlist_head(ev events, p_seats integer, p_limit integer)
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
            WHERE b.event_id = ev.id AND b.status = 'waitlisted'
              AND b.cancel_requested_at IS NULL AND b.quantity <= ev.seat_capacity
            ORDER BY b.queue_seq LIMIT greatest(least(p_limit, p_seats), 0)
        ) w
    ) h
    WHERE h.taken <= p_seats
    ORDER BY h.queue_seq
$$;
