-- process_event_queue, as migration 0004 installs it: 0003 with sold_out checked before
-- limit_exceeded (as intake does) and the event row locked FOR NO KEY UPDATE, so intake's
-- foreign-key checks (FOR KEY SHARE) on the event are not held up while a batch runs.
CREATE FUNCTION process_event_queue(
    p_event_id integer, p_limit integer, p_worker text
) RETURNS TABLE (
    booking_id varchar, user_id integer, quantity integer, status varchar, reason varchar,
    seats_left integer, available_seats integer, seat_capacity integer, version bigint,
    created_at timestamptz, decided_at timestamptz
) LANGUAGE plpgsql AS $$
DECLARE
    ev record;
    r record;
    v_now timestamptz := now();
    v_available integer;
    v_past boolean;
    v_seats integer;
    v_repeat jsonb := '{}'::jsonb;
    v_n integer := 0;
    v_ids bigint[] := '{}';
    v_bids varchar[] := '{}';
    v_users integer[] := '{}';
    v_qty integer[] := '{}';
    v_created timestamptz[] := '{}';
    v_status varchar[] := '{}';
    v_reason varchar[] := '{}';
    v_left integer[] := '{}';
    v_version bigint;
    v_changed boolean := false;
BEGIN
    SELECT e.* INTO ev FROM events e WHERE e.id = p_event_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    v_available := ev.available_seats;
    v_past := ev.event_date <= v_now;

    FOR r IN
        SELECT b.id, b.booking_id, b.user_id, b.quantity, b.status, b.created_at FROM bookings b
        WHERE b.event_id = p_event_id AND b.cancel_requested_at IS NOT NULL
          AND b.status IN ('pending', 'confirmed')
        ORDER BY b.id LIMIT p_limit
    LOOP
        IF r.status = 'confirmed' THEN
            v_available := v_available + r.quantity;
            v_changed := true;
        END IF;
        v_n := v_n + 1;
        v_ids[v_n] := r.id;
        v_bids[v_n] := r.booking_id;
        v_users[v_n] := r.user_id;
        v_qty[v_n] := r.quantity;
        v_created[v_n] := r.created_at;
        v_status[v_n] := 'cancelled';
        v_reason[v_n] := NULL;
        v_left[v_n] := v_available;
    END LOOP;

    IF v_n > 0 THEN
        UPDATE bookings b SET status = 'cancelled', cancelled_at = v_now,
               decided_at = coalesce(b.decided_at, v_now)
        WHERE b.id = ANY (v_ids);
    END IF;

    IF v_n < p_limit THEN
        FOR r IN
            WITH batch AS (
                SELECT b.id, b.booking_id, b.user_id, b.quantity, b.created_at FROM bookings b
                WHERE b.event_id = p_event_id AND b.status = 'pending'
                  AND b.cancel_requested_at IS NULL
                ORDER BY b.id LIMIT p_limit - v_n
            ), held AS (
                -- Seats each user of this batch already holds for the event (per-user limit).
                SELECT c.user_id, sum(c.quantity)::integer AS seats FROM bookings c
                WHERE c.event_id = p_event_id AND c.status = 'confirmed'
                  AND c.user_id IN (SELECT batch.user_id FROM batch)
                GROUP BY c.user_id
            )
            SELECT batch.*, coalesce(held.seats, 0) AS held,
                   count(*) OVER (PARTITION BY batch.user_id) > 1 AS repeated
            FROM batch LEFT JOIN held ON held.user_id = batch.user_id
            ORDER BY batch.id
        LOOP
            v_seats := r.held;
            IF r.repeated THEN
                v_seats := v_seats + coalesce((v_repeat ->> r.user_id::text)::integer, 0);
            END IF;
            v_n := v_n + 1;
            v_ids[v_n] := r.id;
            v_bids[v_n] := r.booking_id;
            v_users[v_n] := r.user_id;
            v_qty[v_n] := r.quantity;
            v_created[v_n] := r.created_at;
            IF v_past THEN
                v_status[v_n] := 'rejected';
                v_reason[v_n] := 'event_past';
            ELSIF r.quantity > v_available THEN
                v_status[v_n] := 'rejected';
                v_reason[v_n] := 'sold_out';
            ELSIF v_seats + r.quantity > ev.max_seats_per_user THEN
                v_status[v_n] := 'rejected';
                v_reason[v_n] := 'limit_exceeded';
            ELSE
                v_available := v_available - r.quantity;
                v_changed := true;
                IF r.repeated THEN
                    v_repeat := jsonb_set(v_repeat, ARRAY[r.user_id::text],
                                          to_jsonb(v_seats - r.held + r.quantity));
                END IF;
                v_status[v_n] := 'confirmed';
                v_reason[v_n] := NULL;
            END IF;
            v_left[v_n] := v_available;
        END LOOP;

        UPDATE bookings b SET status = d.status, reason = d.reason, decided_at = v_now
        FROM unnest(v_ids, v_status, v_reason) AS d(id, status, reason)
        WHERE b.id = d.id AND d.status <> 'cancelled';
    END IF;

    IF v_n = 0 THEN
        RETURN;
    END IF;

    v_version := ev.version;
    -- One version per batch that moved seats; a batch of rejections alone changes nothing.
    IF v_changed THEN
        UPDATE events e SET available_seats = v_available, version = e.version + 1,
               updated_at = now()
        WHERE e.id = p_event_id
        RETURNING e.version INTO v_version;
    END IF;

    INSERT INTO booking_logs (booking_id, action, user_id, event_id, details)
    SELECT d.bid, d.status, d.uid, p_event_id,
           jsonb_strip_nulls(jsonb_build_object(
               'reason', d.reason, 'quantity', d.qty, 'seats_remaining', d.seats_left,
               'batch_size', v_n, 'worker', p_worker))
    FROM unnest(v_bids, v_status, v_reason, v_left, v_users, v_qty) WITH ORDINALITY
         AS d(bid, status, reason, seats_left, uid, qty, n)
    ORDER BY d.n;

    RETURN QUERY
    SELECT d.bid, d.uid, d.qty, d.status, d.reason, d.seats_left,
           v_available, ev.seat_capacity, v_version, d.created, v_now
    FROM unnest(v_bids, v_users, v_qty, v_status, v_reason, v_left, v_created) WITH ORDINALITY
         AS d(bid, uid, qty, status, reason, seats_left, created, n)
    ORDER BY d.n;
END;
$$;
