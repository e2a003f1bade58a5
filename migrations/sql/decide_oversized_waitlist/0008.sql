-- decide_oversized_waitlist, as migration 0008 installs it: a decider step (promote_waitlist,
-- which the API's update_event runs in the transaction that changes the event). A waitlisted
-- request that wants more seats than the event now holds (its capacity was lowered) could
-- never be met and, at the head, would hold everybody behind it forever: it is rejected
-- 'capacity_lowered' (docs/API.md, "Waiting room"), in arrival order.
CREATE FUNCTION decide_oversized_waitlist(ev events) RETURNS SETOF decision
LANGUAGE sql STABLE AS $$
    SELECT w.id, w.booking_id, w.user_id, w.quantity, w.created_at, w.queue_seq,
           CAST('waitlisted' AS varchar), CAST('rejected' AS varchar),
           CAST('capacity_lowered' AS varchar), false, ev.available_seats,
           CAST(ev.waitlist_length - row_number() OVER (ORDER BY w.queue_seq) AS integer)
    FROM (
        SELECT b.id, b.booking_id, b.user_id, b.quantity, b.created_at, b.queue_seq
        FROM bookings b
        WHERE b.event_id = ev.id AND b.status = 'waitlisted' AND b.cancel_requested_at IS NULL
          AND b.quantity > ev.seat_capacity
    ) w
    ORDER BY w.queue_seq
$$;
