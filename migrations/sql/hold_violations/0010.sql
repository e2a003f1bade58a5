-- hold_violations, as migration 0010 installs it: what `ebs check` finds wrong with holds. Holds
-- still held more than p_grace_seconds past their expires_at (their timer was lost and the
-- sweeper has not caught them yet, or nothing runs the decider), and held bookings without an
-- expires_at. Empty when all is well.
CREATE FUNCTION hold_violations(p_grace_seconds double precision DEFAULT 0)
RETURNS TABLE (event_id integer, booking_id varchar, problem varchar, expires_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT b.event_id, b.booking_id,
           CAST(CASE WHEN b.expires_at IS NULL THEN 'hold_without_expiry'
                     ELSE 'hold_past_expiry' END AS varchar),
           b.expires_at
    FROM bookings b
    WHERE b.status = 'held'
      AND (b.expires_at IS NULL
           OR b.expires_at < now() - p_grace_seconds * interval '1 second')
    ORDER BY b.event_id, b.id;
$$;
