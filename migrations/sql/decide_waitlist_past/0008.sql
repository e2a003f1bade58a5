-- decide_waitlist_past, as migration 0008 installs it: a decider step (process_event_queue),
-- taken once the event has started (the sweeper signals such events). Its waitlisted requests
-- are rejected 'event_past' in arrival order, at most p_limit.
CREATE FUNCTION decide_waitlist_past(ev events, p_limit integer) RETURNS SETOF decision
LANGUAGE sql STABLE AS $$
    SELECT w.id, w.booking_id, w.user_id, w.quantity, w.created_at, w.queue_seq,
           CAST('waitlisted' AS varchar), CAST('rejected' AS varchar),
           CAST('event_past' AS varchar), false, ev.available_seats,
           CAST(ev.waitlist_length - row_number() OVER (ORDER BY w.queue_seq) AS integer)
    FROM (
        SELECT b.id, b.booking_id, b.user_id, b.quantity, b.created_at, b.queue_seq
        FROM bookings b
        WHERE b.event_id = ev.id AND b.status = 'waitlisted' AND b.cancel_requested_at IS NULL
        ORDER BY b.queue_seq LIMIT p_limit
    ) w
    ORDER BY w.queue_seq
$$;
