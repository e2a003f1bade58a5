-- process_event_queue, as migration 0006 installs it: 0005 that never waits for another drain
-- of the same event, and whose updates touch only rows still in the state it read.
--
-- One drain per event at a time is a transaction-level advisory lock on (1162957636, event id)
-- (the class is 'EBSD' in ASCII; common/bookings/procedures.py DRAIN_LOCK_CLASS reads the same
-- number from pg_locks). A call that cannot take it raises SQLSTATE 'EBUSY' at once: the task
-- leaves and its worker slot goes to another event, while the drain holding the lock decides
-- what arrived meanwhile (the signal protocol of common/bookings/signals.py). The event row is
-- still locked, waiting, against the API's short writes to it (edits, the sync baseline).
--
-- The UPDATEs check that each row is still as the batch read it; if any is not (something wrote
-- it without the locks above), the batch is rolled back with serialization_failure, which the
-- worker retries, so "decided once" does not rest on the locks alone.
CREATE FUNCTION process_event_queue(
    p_event_id integer, p_limit integer, p_worker text
) RETURNS TABLE (
    booking_id varchar, user_id integer, quantity integer, status varchar, reason varchar,
    seats_left integer, available_seats integer, seat_capacity integer, version bigint,
    created_at timestamptz, decided_at timestamptz
) LANGUAGE plpgsql AS $$
DECLARE
    ev events;
    r record;
    v_now timestamptz := now();
    v_available integer;
    v_verdict varchar;
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
    v_prev varchar[] := '{}';
    v_cancels integer;
    v_rows integer;
    v_version bigint;
    v_changed boolean := false;
BEGIN
    -- (Messages are concatenated: drivers read a percent sign in these files as a parameter.)
    IF NOT pg_try_advisory_xact_lock(1162957636, p_event_id) THEN
        RAISE EXCEPTION USING ERRCODE = 'EBUSY',
            MESSAGE = 'event ' || p_event_id || ' is being drained by another task';
    END IF;
    SELECT e.* INTO ev FROM events e WHERE e.id = p_event_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    v_available := ev.available_seats;

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
        v_prev[v_n] := r.status;
        v_status[v_n] := 'cancelled';
        v_reason[v_n] := NULL;
        v_left[v_n] := v_available;
    END LOOP;
    v_cancels := v_n;

    IF v_cancels > 0 THEN
        UPDATE bookings b SET status = 'cancelled', cancelled_at = v_now,
               decided_at = coalesce(b.decided_at, v_now)
        FROM unnest(v_ids, v_prev) AS d(id, prev)
        WHERE b.id = d.id AND b.status = d.prev;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        IF v_rows <> v_cancels THEN
            RAISE EXCEPTION USING ERRCODE = 'serialization_failure',
                MESSAGE = 'a cancellation of event ' || p_event_id || ' changed under the decider';
        END IF;
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
            v_verdict := booking_verdict(ev, r.quantity, v_available, v_seats);
            IF v_verdict <> 'confirmed' THEN
                v_status[v_n] := 'rejected';
                v_reason[v_n] := v_verdict;
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
        WHERE b.id = d.id AND d.status <> 'cancelled' AND b.status = 'pending';
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        IF v_rows <> v_n - v_cancels THEN
            RAISE EXCEPTION USING ERRCODE = 'serialization_failure',
                MESSAGE = 'a booking of event ' || p_event_id || ' was decided under the decider';
        END IF;
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
