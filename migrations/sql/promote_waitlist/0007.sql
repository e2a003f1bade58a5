-- promote_waitlist, as migration 0007 installs it: confirm an event's waitlisted requests that
-- its free seats now fit (waitlist_head: arrival order, the head waits), with the line cursor,
-- waitlist length, seats and version kept as process_event_queue keeps them and a 'promoted'
-- audit entry each. Called by the API's update_event (common/events/service.py) in the
-- transaction that changes the event, so seats a capacity raise (or any edit) leaves free never
-- sit idle while somebody waits. Same rows as process_event_queue; nothing if nothing fits or
-- the event has started (the decider rejects its waitlist then).
--
-- It takes the event row lock (the caller holds it already), the one every writer of the line
-- holds, not the drain's advisory lock: a drain waiting for the row while holding that lock
-- would otherwise wait on us in a circle.
CREATE FUNCTION promote_waitlist(p_event_id integer, p_worker text) RETURNS TABLE (
    booking_id varchar, user_id integer, quantity integer, status varchar, reason varchar,
    seats_left integer, available_seats integer, seat_capacity integer, version bigint,
    created_at timestamptz, decided_at timestamptz, queue_seq bigint, queue_position integer,
    promoted boolean, line_through bigint, line_gone bigint[], line_waiting integer,
    waitlist_length integer
) LANGUAGE plpgsql AS $$
DECLARE
    ev events;
    v_now timestamptz := now();
    v_ids bigint[];
    v_bids varchar[];
    v_users integer[];
    v_qty integer[];
    v_created timestamptz[];
    v_seqs bigint[];
    v_left integer[];
    v_n integer;
    v_rows integer;
    v_available integer;
    v_version bigint;
    v_through bigint;
    v_gone bigint[];
    v_waiting integer;
BEGIN
    SELECT e.* INTO ev FROM events e WHERE e.id = p_event_id FOR NO KEY UPDATE;
    IF NOT FOUND OR ev.waitlist_length = 0 OR ev.available_seats = 0
       OR ev.event_date <= v_now THEN
        RETURN;
    END IF;
    SELECT array_agg(h.id ORDER BY h.queue_seq), array_agg(h.booking_id ORDER BY h.queue_seq),
           array_agg(h.user_id ORDER BY h.queue_seq), array_agg(h.quantity ORDER BY h.queue_seq),
           array_agg(h.created_at ORDER BY h.queue_seq), array_agg(h.queue_seq ORDER BY h.queue_seq),
           array_agg(h.seats_left ORDER BY h.queue_seq), count(*), min(h.seats_left)
    INTO v_ids, v_bids, v_users, v_qty, v_created, v_seqs, v_left, v_n, v_available
    FROM waitlist_head(p_event_id, ev.available_seats, ev.available_seats) h;
    IF v_n = 0 THEN
        RETURN;
    END IF;

    UPDATE bookings b SET status = 'confirmed', decided_at = v_now
    FROM unnest(v_ids) AS d(id) WHERE b.id = d.id AND b.status = 'waitlisted';
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    IF v_rows <> v_n THEN
        RAISE EXCEPTION USING ERRCODE = 'serialization_failure',
            MESSAGE = 'the waitlist of event ' || p_event_id || ' changed under its promotion';
    END IF;

    SELECT l.line_through, l.line_gone, l.line_waiting INTO v_through, v_gone, v_waiting
    FROM line_after(p_event_id, ev.line_gone, v_seqs, ev.line_through) l;
    UPDATE events e SET available_seats = v_available, version = e.version + 1,
           line_through = v_through, line_gone = v_gone,
           waitlist_length = e.waitlist_length - v_n, updated_at = now()
    WHERE e.id = p_event_id
    RETURNING e.version INTO v_version;

    INSERT INTO booking_logs (booking_id, action, user_id, event_id, details)
    SELECT d.bid, 'promoted', d.uid, p_event_id,
           jsonb_build_object('quantity', d.qty, 'seats_remaining', d.seats_left,
                              'batch_size', v_n, 'worker', p_worker)
    FROM unnest(v_bids, v_users, v_qty, v_left) WITH ORDINALITY AS d(bid, uid, qty, seats_left, n)
    ORDER BY d.n;

    RETURN QUERY
    SELECT d.bid, d.uid, d.qty, CAST('confirmed' AS varchar), CAST(NULL AS varchar),
           d.seats_left, v_available, ev.seat_capacity, v_version, d.created, v_now, d.seq,
           CAST(NULL AS integer), true, v_through, v_gone, v_waiting, ev.waitlist_length - v_n
    FROM unnest(v_bids, v_users, v_qty, v_left, v_created, v_seqs) WITH ORDINALITY
         AS d(bid, uid, qty, seats_left, created, seq, n)
    ORDER BY d.n;
END;
$$;
