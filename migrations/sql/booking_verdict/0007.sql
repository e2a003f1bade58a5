-- booking_verdict, as migration 0007 installs it: 0005 with the waitlist. A request for more seats
-- than are left for it is 'waitlisted' instead of 'sold_out' when the event has a waitlist and the
-- request could ever be met (no more seats than the event holds); the per-user limit (p_held
-- counting the user's confirmed and waitlisted seats) is asked before the waitlist is offered,
-- so a user cannot queue more seats than they may hold. The rules, the first that applies
-- winning: event_past, sold_out (no waitlist, or a request the event can never meet),
-- limit_exceeded, waitlisted, confirmed. LANGUAGE sql and STABLE (now()), so the planner inlines
-- it into each caller's expression.
CREATE OR REPLACE FUNCTION booking_verdict(
    ev events, p_quantity integer, p_seats_left integer, p_held integer
) RETURNS varchar LANGUAGE sql STABLE AS $$
    SELECT CAST(CASE
        WHEN ev.event_date <= now() THEN 'event_past'
        WHEN p_quantity > p_seats_left
             AND NOT (ev.waitlist_enabled AND p_quantity <= ev.seat_capacity) THEN 'sold_out'
        WHEN p_held + p_quantity > ev.max_seats_per_user THEN 'limit_exceeded'
        WHEN p_quantity > p_seats_left THEN 'waitlisted'
        ELSE 'confirmed'
    END AS varchar)
$$;
