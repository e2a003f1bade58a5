-- decide_promotions, as migration 0008 installs it: a decider step (process_event_queue after
-- its cancellations, promote_waitlist after an edit). The waitlisted requests the event's free
-- seats now fit are confirmed ("promoted") in arrival order, the head waiting
-- (waitlist_head), at most p_limit, in the transaction that freed the seats.
CREATE FUNCTION decide_promotions(ev events, p_limit integer) RETURNS SETOF decision
LANGUAGE sql STABLE AS $$
    SELECT h.id, h.booking_id, h.user_id, h.quantity, h.created_at, h.queue_seq,
           CAST('waitlisted' AS varchar), CAST('confirmed' AS varchar), CAST(NULL AS varchar),
           true, h.seats_left,
           CAST(ev.waitlist_length - row_number() OVER (ORDER BY h.queue_seq) AS integer)
    FROM waitlist_head(ev, ev.available_seats, p_limit) h
    ORDER BY h.queue_seq
$$;
