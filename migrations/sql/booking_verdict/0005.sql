-- booking_verdict, as migration 0005 installs it: the one home of the booking rules.
-- What a request for p_quantity seats of event ev gets when p_seats_left seats are left for it
-- and its user already holds p_held confirmed seats of the event: 'confirmed', or the reason it
-- is rejected, the first rule that applies winning. Every path asks it: the worker's batch
-- decider, the intake (which refuses at once with p_held = 0 and the seats the event shows) and
-- the benchmark baseline's check and procedure. A new rule (a waitlist instead of sold_out, say)
-- is one more WHEN here, reading the event's own columns. LANGUAGE sql and STABLE (now()), so
-- the planner inlines it into each caller's expression.
CREATE FUNCTION booking_verdict(
    ev events, p_quantity integer, p_seats_left integer, p_held integer
) RETURNS varchar LANGUAGE sql STABLE AS $$
    SELECT CAST(CASE
        WHEN ev.event_date <= now() THEN 'event_past'
        WHEN p_quantity > p_seats_left THEN 'sold_out'
        WHEN p_held + p_quantity > ev.max_seats_per_user THEN 'limit_exceeded'
        ELSE 'confirmed'
    END AS varchar)
$$;
