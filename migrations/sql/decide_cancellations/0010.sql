-- decide_cancellations, as migration 0010 installs it: 0008 with holds. A decider step
-- (process_event_queue). The event's cancellations asked for, oldest first, at most p_limit: a
-- confirmed or held booking gives its seats back (a cancelled hold is released at once, never
-- left to expire); a pending or waitlisted request just leaves the line.
CREATE FUNCTION decide_cancellations(ev events, p_limit integer) RETURNS SETOF decision
LANGUAGE sql STABLE AS $$
    SELECT c.id, c.booking_id, c.user_id, c.quantity, c.created_at, c.queue_seq, c.status,
           CAST('cancelled' AS varchar), CAST(NULL AS varchar), false,
           CAST(ev.available_seats + sum(CASE WHEN c.status IN ('confirmed', 'held') THEN c.quantity ELSE 0 END)
                OVER w AS integer),
           CAST(ev.waitlist_length - count(*) FILTER (WHERE c.status = 'waitlisted') OVER w
                AS integer)
    FROM (
        SELECT b.id, b.booking_id, b.user_id, b.quantity, b.created_at, b.queue_seq, b.status
        FROM bookings b
        WHERE b.event_id = ev.id AND b.cancel_requested_at IS NOT NULL
          AND b.status IN ('pending', 'waitlisted', 'confirmed', 'held')
        ORDER BY b.id LIMIT p_limit
    ) c
    WINDOW w AS (ORDER BY c.id)
    ORDER BY c.id
$$;
