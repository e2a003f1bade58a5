-- decide_requests, as migration 0010 installs it: 0008 with holds (a user's held seats count
-- toward the per-user limit as confirmed ones do). A decider step (process_event_queue, after the
-- cancellations and the waitlist). Pending requests in arrival order (queue_seq), at most
-- p_limit, as booking_verdict says, with no seats left while anybody is waitlisted (counting
-- those this step waitlists: nobody passes the waitlist) and the user's confirmed and
-- waitlisted seats as held: the rows', less what p_batch (the steps before, not yet written)
-- takes from them, plus what this step gave the same user before.
CREATE FUNCTION decide_requests(ev events, p_batch decision[], p_limit integer)
RETURNS SETOF decision LANGUAGE plpgsql STABLE AS $$
DECLARE
    r record;
    d decision;
    v_available integer := ev.available_seats;
    v_waitlisted integer := ev.waitlist_length;
    v_verdict varchar;
    v_seats integer;
    v_repeat jsonb := '{}'::jsonb;
BEGIN
    FOR r IN
        WITH batch AS (
            SELECT b.id, b.booking_id, b.user_id, b.quantity, b.created_at, b.queue_seq
            FROM bookings b
            WHERE b.event_id = ev.id AND b.status = 'pending' AND b.cancel_requested_at IS NULL
            ORDER BY b.queue_seq LIMIT p_limit
        ), held AS (
            -- Seats each user of this batch already holds or waits for (per-user limit).
            SELECT c.user_id, sum(c.quantity)::integer AS seats FROM bookings c
            WHERE c.event_id = ev.id AND c.status IN ('confirmed', 'held', 'waitlisted')
              AND c.user_id IN (SELECT batch.user_id FROM batch)
            GROUP BY c.user_id
        ), released AS (
            SELECT p.user_id, sum(p.quantity)::integer AS seats FROM unnest(p_batch) p
            WHERE p.prev IN ('confirmed', 'held', 'waitlisted')
              AND p.status NOT IN ('confirmed', 'held', 'waitlisted')
            GROUP BY p.user_id
        )
        SELECT batch.*,
               coalesce(held.seats, 0) - coalesce(released.seats, 0) AS held,
               count(*) OVER (PARTITION BY batch.user_id) > 1 AS repeated
        FROM batch LEFT JOIN held ON held.user_id = batch.user_id
             LEFT JOIN released ON released.user_id = batch.user_id
        ORDER BY batch.queue_seq
    LOOP
        v_seats := r.held;
        IF r.repeated THEN
            v_seats := v_seats + coalesce((v_repeat ->> r.user_id::text)::integer, 0);
        END IF;
        v_verdict := booking_verdict(ev, r.quantity,
                                     CASE WHEN v_waitlisted > 0 THEN 0 ELSE v_available END,
                                     v_seats);
        d := ROW(r.id, r.booking_id, r.user_id, r.quantity, r.created_at, r.queue_seq,
                 'pending', 'rejected', v_verdict, false, 0, 0);
        IF v_verdict = 'confirmed' OR v_verdict = 'waitlisted' THEN
            IF v_verdict = 'confirmed' THEN
                v_available := v_available - r.quantity;
            ELSE
                v_waitlisted := v_waitlisted + 1;
            END IF;
            IF r.repeated THEN
                v_repeat := jsonb_set(v_repeat, ARRAY[r.user_id::text],
                                      to_jsonb(v_seats - r.held + r.quantity));
            END IF;
            d.status := v_verdict;
            d.reason := NULL;
        END IF;
        d.seats_left := v_available;
        d.waitlist_left := v_waitlisted;
        RETURN NEXT d;
    END LOOP;
END;
$$;
