-- decide_expiries, as migration 0010 installs it: a decider step (process_event_queue, after the
-- cancellations). The event's holds whose expires_at has passed, earliest first, at most
-- p_limit: each gives its seats back ('held' -> 'expired'). A hold whose owner asked to cancel
-- is decide_cancellations' (it ran first). Reads idx_bookings_held_expiry.
CREATE FUNCTION decide_expiries(ev events, p_limit integer) RETURNS SETOF decision
LANGUAGE sql STABLE AS $$
    SELECT h.id, h.booking_id, h.user_id, h.quantity, h.created_at, h.queue_seq,
           CAST('held' AS varchar), CAST('expired' AS varchar), CAST(NULL AS varchar), false,
           CAST(ev.available_seats + sum(h.quantity) OVER w AS integer), ev.waitlist_length
    FROM (
        SELECT b.id, b.booking_id, b.user_id, b.quantity, b.created_at, b.queue_seq, b.expires_at
        FROM bookings b
        WHERE b.event_id = ev.id AND b.status = 'held' AND b.expires_at <= now()
          AND b.cancel_requested_at IS NULL
        ORDER BY b.expires_at, b.id LIMIT p_limit
    ) h
    WINDOW w AS (ORDER BY h.expires_at, h.id)
    ORDER BY h.expires_at, h.id
$$;
