-- apply_decisions, as migration 0010 installs it: 0008 with holds. A batch's decisions written
-- to their rows in one UPDATE. A hold expires ev.hold_seconds after the batch (p_now); an
-- expired hold keeps its decided_at, like a cancelled booking. A waitlisted request is not decided yet: decided_at is set when it leaves the
-- line; a cancelled one keeps the decided_at it had. Each row must still be as the batch read
-- it (status = prev); if any is not (something wrote it without the event's locks), the batch
-- is rolled back with serialization_failure, which the worker retries, so "decided once" does
-- not rest on the locks alone.
CREATE FUNCTION apply_decisions(ev events, p_batch decision[], p_now timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_rows integer;
BEGIN
    UPDATE bookings b SET status = d.status, reason = d.reason,
           cancelled_at = CASE WHEN d.status = 'cancelled' THEN p_now ELSE b.cancelled_at END,
           expires_at = CASE WHEN d.status = 'held'
                             THEN p_now + ev.hold_seconds * interval '1 second'
                             ELSE b.expires_at END,
           decided_at = CASE d.status WHEN 'waitlisted' THEN NULL
                                      WHEN 'cancelled' THEN coalesce(b.decided_at, p_now)
                                      WHEN 'expired' THEN coalesce(b.decided_at, p_now)
                                      ELSE p_now END
    FROM unnest(p_batch) d
    WHERE b.id = d.id AND b.status = d.prev;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    IF v_rows <> cardinality(p_batch) THEN
        -- (Messages are concatenated: drivers read a percent sign in these files as a parameter.)
        RAISE EXCEPTION USING ERRCODE = 'serialization_failure',
            MESSAGE = 'a booking of event ' || ev.id || ' was decided under the decider';
    END IF;
END;
$$;
