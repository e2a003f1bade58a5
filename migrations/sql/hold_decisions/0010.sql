-- hold_decisions, as migration 0010 installs it: the last step before settle_decisions. On an
-- event with hold_seconds, a request the steps confirmed (a pending one accepted, a waitlisted
-- one promoted) is held instead: its seats are taken, its expires_at is set when the batch is
-- written (apply_decisions). Without hold_seconds the batch is returned as it is.
CREATE FUNCTION hold_decisions(ev events, p_batch decision[]) RETURNS decision[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN ev.hold_seconds IS NULL THEN p_batch ELSE ARRAY(
        SELECT ROW(d.id, d.booking_id, d.user_id, d.quantity, d.created_at, d.queue_seq, d.prev,
                   CASE WHEN d.status = 'confirmed' AND d.prev IN ('pending', 'waitlisted')
                        THEN CAST('held' AS varchar) ELSE d.status END,
                   d.reason, d.promoted, d.seats_left, d.waitlist_left)::decision
        FROM unnest(p_batch) WITH ORDINALITY AS d
        ORDER BY d.ordinality) END
$$;
