-- promote_waitlist, as migration 0010 installs it: 0008 with holds (a promotion on an event
-- with holdSeconds is a hold, hold_decisions). As 0008:
-- the decider's waitlist steps for the API's
-- update_event (common/events/service.py), in the transaction that changes the event:
-- decide_oversized_waitlist (a request the lowered capacity can never hold leaves the line,
-- rejected 'capacity_lowered', so it holds nobody behind it), then decide_promotions (seats an
-- edit leaves free never sit idle while somebody waits), then settle_decisions as
-- process_event_queue ends. Nothing if the event has started (the decider rejects its
-- waitlist then).
--
-- It takes the event row lock (the caller holds it already), the one every writer of the line
-- holds, not the drain's advisory lock: a drain waiting for the row while holding that lock
-- would otherwise wait on us in a circle.
CREATE FUNCTION promote_waitlist(p_event_id integer, p_worker text) RETURNS TABLE (
    booking_id varchar, user_id integer, quantity integer, status varchar, reason varchar,
    seats_left integer, available_seats integer, seat_capacity integer, version bigint,
    created_at timestamptz, decided_at timestamptz, queue_seq bigint, queue_position integer,
    promoted boolean, line_through bigint, line_gone bigint[], line_waiting integer,
    waitlist_length integer, expires_at timestamptz
) LANGUAGE plpgsql AS $$
DECLARE
    taken events;
    ev events;
    v_batch decision[] := '{}';
BEGIN
    SELECT e.* INTO taken FROM events e WHERE e.id = p_event_id FOR NO KEY UPDATE;
    IF NOT FOUND OR taken.event_date <= now() THEN
        RETURN;
    END IF;
    ev := taken;
    IF ev.waitlist_length > 0 THEN
        v_batch := ARRAY(SELECT d FROM decide_oversized_waitlist(ev) d);
        ev := event_after(ev, v_batch);
    END IF;
    IF ev.waitlist_length > 0 AND ev.available_seats > 0 THEN
        v_batch := v_batch || ARRAY(SELECT d FROM decide_promotions(ev, ev.available_seats) d);
    END IF;
    RETURN QUERY SELECT * FROM settle_decisions(taken, hold_decisions(taken, v_batch), p_worker);
END;
$$;
