-- process_event_queue, as migration 0007 installs it: 0006 with the waiting room (docs/API.md,
-- "Waiting room"). Under the same locks, one batch of at most p_limit decisions, in this order:
--
-- 1. Cancellations asked for: a confirmed booking gives its seats back; a pending or waitlisted
--    request just leaves the line.
-- 2. The waitlist. Once the event has started every waitlisted request is rejected 'event_past'
--    (the sweeper signals such events); before that its head is confirmed ("promoted") in
--    arrival order while it fits the free seats (waitlist_head: the head waits, nobody skips
--    it), in the transaction that freed them.
-- 3. Pending requests in arrival order (queue_seq), as booking_verdict says, with no seats left
--    while anybody is waitlisted (counting those waitlisted earlier in the batch: nobody passes
--    the waitlist) and the user's confirmed and waitlisted seats (the same) as held.
--
-- The event row gets its seats and version (version only when seats moved, as before) and its
-- line cursor (line_after) and waitlist length in one UPDATE. The decisions come back with the
-- line after the batch; a waitlisted request with its place in it.
--
-- One drain per event at a time is a transaction-level advisory lock on (1162957636, event id)
-- (the class is 'EBSD' in ASCII; common/bookings/procedures.py DRAIN_LOCK_CLASS reads the same
-- number from pg_locks). A call that cannot take it raises SQLSTATE 'EBUSY' at once: the task
-- leaves and its worker slot goes to another event, while the drain holding the lock decides
-- what arrived meanwhile (the signal protocol of common/bookings/signals.py). The event row is
-- still locked, waiting, against the API's short writes to it (edits and their promotions,
-- the sync baseline): every writer of the line cursor holds it.
--
-- The UPDATEs check that each row is still as the batch read it; if any is not (something wrote
-- it without the locks above), the batch is rolled back with serialization_failure, which the
-- worker retries, so "decided once" does not rest on the locks alone.
CREATE FUNCTION process_event_queue(
    p_event_id integer, p_limit integer, p_worker text
) RETURNS TABLE (
    booking_id varchar, user_id integer, quantity integer, status varchar, reason varchar,
    seats_left integer, available_seats integer, seat_capacity integer, version bigint,
    created_at timestamptz, decided_at timestamptz, queue_seq bigint, queue_position integer,
    promoted boolean, line_through bigint, line_gone bigint[], line_waiting integer,
    waitlist_length integer
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
    v_seqs bigint[] := '{}';
    v_promoted boolean[] := '{}';
    v_positions integer[];
    v_waitlisted integer;
    v_cancels integer;
    v_rows integer;
    v_version bigint;
    v_changed boolean := false;
    v_line_moved boolean := false;
    v_through bigint;
    v_gone bigint[];
    v_waiting integer;
    v_last_pending bigint := 0;
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
    v_waitlisted := ev.waitlist_length;

    FOR r IN
        SELECT b.id, b.booking_id, b.user_id, b.quantity, b.status, b.created_at, b.queue_seq
        FROM bookings b
        WHERE b.event_id = p_event_id AND b.cancel_requested_at IS NOT NULL
          AND b.status IN ('pending', 'waitlisted', 'confirmed')
        ORDER BY b.id LIMIT p_limit
    LOOP
        IF r.status = 'confirmed' THEN
            v_available := v_available + r.quantity;
            v_changed := true;
        ELSE
            v_line_moved := true;
            IF r.status = 'waitlisted' THEN
                v_waitlisted := v_waitlisted - 1;
            END IF;
        END IF;
        v_n := v_n + 1;
        v_ids[v_n] := r.id;
        v_bids[v_n] := r.booking_id;
        v_users[v_n] := r.user_id;
        v_qty[v_n] := r.quantity;
        v_created[v_n] := r.created_at;
        v_seqs[v_n] := r.queue_seq;
        v_prev[v_n] := r.status;
        v_status[v_n] := 'cancelled';
        v_reason[v_n] := NULL;
        v_promoted[v_n] := false;
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

    IF v_waitlisted > 0 AND v_n < p_limit THEN
        IF ev.event_date <= v_now THEN
            FOR r IN
                SELECT b.id, b.booking_id, b.user_id, b.quantity, b.created_at, b.queue_seq
                FROM bookings b
                WHERE b.event_id = p_event_id AND b.status = 'waitlisted'
                  AND b.cancel_requested_at IS NULL
                ORDER BY b.queue_seq LIMIT p_limit - v_n
            LOOP
                v_n := v_n + 1;
                v_ids[v_n] := r.id;
                v_bids[v_n] := r.booking_id;
                v_users[v_n] := r.user_id;
                v_qty[v_n] := r.quantity;
                v_created[v_n] := r.created_at;
                v_seqs[v_n] := r.queue_seq;
                v_prev[v_n] := 'waitlisted';
                v_status[v_n] := 'rejected';
                v_reason[v_n] := 'event_past';
                v_promoted[v_n] := false;
                v_left[v_n] := v_available;
                v_waitlisted := v_waitlisted - 1;
                v_line_moved := true;
            END LOOP;
        ELSE
            FOR r IN SELECT h.* FROM waitlist_head(p_event_id, v_available, p_limit - v_n) h
            LOOP
                v_available := r.seats_left;
                v_n := v_n + 1;
                v_ids[v_n] := r.id;
                v_bids[v_n] := r.booking_id;
                v_users[v_n] := r.user_id;
                v_qty[v_n] := r.quantity;
                v_created[v_n] := r.created_at;
                v_seqs[v_n] := r.queue_seq;
                v_prev[v_n] := 'waitlisted';
                v_status[v_n] := 'confirmed';
                v_reason[v_n] := NULL;
                v_promoted[v_n] := true;
                v_left[v_n] := v_available;
                v_waitlisted := v_waitlisted - 1;
                v_changed := true;
                v_line_moved := true;
            END LOOP;
        END IF;
    END IF;

    IF v_n < p_limit THEN
        FOR r IN
            WITH batch AS (
                SELECT b.id, b.booking_id, b.user_id, b.quantity, b.created_at, b.queue_seq
                FROM bookings b
                WHERE b.event_id = p_event_id AND b.status = 'pending'
                  AND b.cancel_requested_at IS NULL
                ORDER BY b.queue_seq LIMIT p_limit - v_n
            ), held AS (
                -- Seats each user of this batch already holds or waits for (per-user limit).
                SELECT c.user_id, sum(c.quantity)::integer AS seats FROM bookings c
                WHERE c.event_id = p_event_id AND c.status IN ('confirmed', 'waitlisted')
                  AND c.user_id IN (SELECT batch.user_id FROM batch)
                GROUP BY c.user_id
            )
            SELECT batch.*, coalesce(held.seats, 0) AS held,
                   count(*) OVER (PARTITION BY batch.user_id) > 1 AS repeated
            FROM batch LEFT JOIN held ON held.user_id = batch.user_id
            ORDER BY batch.queue_seq
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
            v_seqs[v_n] := r.queue_seq;
            v_prev[v_n] := 'pending';
            v_promoted[v_n] := false;
            v_last_pending := r.queue_seq;
            -- Nobody passes the waitlist: no seats for a newcomer while anybody waits.
            v_verdict := booking_verdict(ev, r.quantity,
                                         CASE WHEN v_waitlisted > 0 THEN 0 ELSE v_available END,
                                         v_seats);
            IF v_verdict = 'confirmed' OR v_verdict = 'waitlisted' THEN
                IF v_verdict = 'confirmed' THEN
                    v_available := v_available - r.quantity;
                    v_changed := true;
                ELSE
                    v_waitlisted := v_waitlisted + 1;
                END IF;
                IF r.repeated THEN
                    v_repeat := jsonb_set(v_repeat, ARRAY[r.user_id::text],
                                          to_jsonb(v_seats - r.held + r.quantity));
                END IF;
                v_status[v_n] := v_verdict;
                v_reason[v_n] := NULL;
            ELSE
                v_status[v_n] := 'rejected';
                v_reason[v_n] := v_verdict;
            END IF;
            v_left[v_n] := v_available;
        END LOOP;
        IF v_n > v_cancels THEN
            v_line_moved := true;
        END IF;
    END IF;

    IF v_n = 0 THEN
        RETURN;
    END IF;

    IF v_n > v_cancels THEN
        -- A waitlisted request is not decided yet: decided_at is set when it leaves the line.
        UPDATE bookings b SET status = d.status, reason = d.reason,
               decided_at = CASE WHEN d.status = 'waitlisted' THEN NULL ELSE v_now END
        FROM unnest(v_ids, v_status, v_reason, v_prev) AS d(id, status, reason, prev)
        WHERE b.id = d.id AND d.status <> 'cancelled' AND b.status = d.prev;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        IF v_rows <> v_n - v_cancels THEN
            RAISE EXCEPTION USING ERRCODE = 'serialization_failure',
                MESSAGE = 'a booking of event ' || p_event_id || ' was decided under the decider';
        END IF;
    END IF;

    -- Numbers that left the line now: all but those waitlisted and the confirmed cancelled.
    -- Every pending request up to the last this batch decided was decided (in number order),
    -- but those with a cancellation asked, which line_after looks at apart.
    SELECT l.line_through, l.line_gone, l.line_waiting INTO v_through, v_gone, v_waiting
    FROM line_after(p_event_id, ev.line_gone, ARRAY(
        SELECT d.seq FROM unnest(v_seqs, v_status, v_prev) AS d(seq, status, prev)
        WHERE d.status <> 'waitlisted' AND d.prev <> 'confirmed'),
        greatest(ev.line_through, v_last_pending)) l;

    v_version := ev.version;
    -- One version per batch that moved seats; a batch of rejections alone moves only the line.
    IF v_changed OR v_line_moved THEN
        UPDATE events e SET available_seats = v_available,
               version = e.version + CASE WHEN v_changed THEN 1 ELSE 0 END,
               line_through = v_through, line_gone = v_gone, waitlist_length = v_waitlisted,
               updated_at = now()
        WHERE e.id = p_event_id
        RETURNING e.version INTO v_version;
    END IF;

    -- Places in the line after the batch, for the requests it waitlisted.
    v_positions := ARRAY(
        SELECT CASE WHEN d.status = 'waitlisted' THEN CAST(d.seq - v_through - (
                   SELECT count(*) FROM unnest(v_gone) AS g(n) WHERE g.n < d.seq) AS integer) END
        FROM unnest(v_seqs, v_status) WITH ORDINALITY AS d(seq, status, n)
        ORDER BY d.n);

    INSERT INTO booking_logs (booking_id, action, user_id, event_id, details)
    SELECT d.bid, CASE WHEN d.promoted THEN 'promoted' ELSE d.status END, d.uid, p_event_id,
           jsonb_strip_nulls(jsonb_build_object(
               'reason', d.reason, 'quantity', d.qty, 'seats_remaining', d.seats_left,
               'queue_position', d.pos, 'batch_size', v_n, 'worker', p_worker))
    FROM unnest(v_bids, v_status, v_reason, v_left, v_users, v_qty, v_promoted, v_positions)
         WITH ORDINALITY AS d(bid, status, reason, seats_left, uid, qty, promoted, pos, n)
    ORDER BY d.n;

    RETURN QUERY
    SELECT d.bid, d.uid, d.qty, d.status, d.reason, d.seats_left,
           v_available, ev.seat_capacity, v_version, d.created,
           CASE WHEN d.status = 'waitlisted' THEN NULL ELSE v_now END,
           d.seq, d.pos, d.promoted, v_through, v_gone, v_waiting, v_waitlisted
    FROM unnest(v_bids, v_users, v_qty, v_status, v_reason, v_left, v_created, v_seqs, v_positions,
                v_promoted) WITH ORDINALITY
         AS d(bid, uid, qty, status, reason, seats_left, created, seq, pos, promoted, n)
    ORDER BY d.n;
END;
$$;
