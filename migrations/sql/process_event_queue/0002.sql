-- process_event_queue, as migration 0002 installs it (and 0003 downgrades to).
-- Decides up to p_limit queued requests of one event in one transaction, in arrival order:
-- first the cancellations asked for, then the pending bookings. The event row lock serialises
-- deciders per event, and only rows still pending (or still cancellable) are touched, so a task
-- that runs twice finds nothing left to do the second time.
CREATE OR REPLACE FUNCTION process_event_queue(
    p_event_id integer, p_limit integer, p_worker text
) RETURNS TABLE (
    booking_id varchar, user_id integer, quantity integer, status varchar, reason varchar,
    seats_left integer, available_seats integer, seat_capacity integer, version bigint
) LANGUAGE plpgsql AS $$
DECLARE
    ev record;
    r record;
    v_available integer;
    v_past boolean;
    v_held jsonb;
    v_seats integer;
    v_ids bigint[] := '{}';
    v_status varchar[] := '{}';
    v_reason varchar[] := '{}';
    v_left integer[] := '{}';
    v_cancelled bigint[] := '{}';
    v_version bigint;
    v_changed boolean := false;
    v_n integer;
BEGIN
    SELECT e.* INTO ev FROM events e WHERE e.id = p_event_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    v_available := ev.available_seats;
    v_past := ev.event_date <= now();

    FOR r IN
        SELECT b.id, b.status, b.quantity FROM bookings b
        WHERE b.event_id = p_event_id AND b.cancel_requested_at IS NOT NULL
          AND b.status IN ('pending', 'confirmed')
        ORDER BY b.id LIMIT p_limit
    LOOP
        IF r.status = 'confirmed' THEN
            v_available := v_available + r.quantity;
            v_changed := true;
        END IF;
        v_ids := v_ids || r.id;
        v_cancelled := v_cancelled || r.id;
        v_status := v_status || 'cancelled'::varchar;
        v_reason := v_reason || NULL::varchar;
        v_left := v_left || v_available;
    END LOOP;

    IF cardinality(v_cancelled) > 0 THEN
        UPDATE bookings b SET status = 'cancelled', cancelled_at = now(),
               decided_at = coalesce(b.decided_at, now())
        WHERE b.id = ANY (v_cancelled);
    END IF;

    v_n := p_limit - cardinality(v_ids);
    IF v_n > 0 THEN
        -- Seats each user of this batch already holds for the event, to enforce the limit.
        SELECT coalesce(jsonb_object_agg(s.user_id::text, s.seats), '{}'::jsonb) INTO v_held
        FROM (
            SELECT c.user_id, sum(c.quantity) AS seats FROM bookings c
            WHERE c.event_id = p_event_id AND c.status = 'confirmed'
              AND c.user_id IN (
                  SELECT p.user_id FROM bookings p
                  WHERE p.event_id = p_event_id AND p.status = 'pending'
                    AND p.cancel_requested_at IS NULL
                  ORDER BY p.id LIMIT v_n)
            GROUP BY c.user_id
        ) s;

        FOR r IN
            SELECT b.id, b.user_id, b.quantity FROM bookings b
            WHERE b.event_id = p_event_id AND b.status = 'pending'
              AND b.cancel_requested_at IS NULL
            ORDER BY b.id LIMIT v_n
        LOOP
            v_seats := coalesce((v_held ->> r.user_id::text)::integer, 0);
            v_ids := v_ids || r.id;
            IF v_past THEN
                v_status := v_status || 'rejected'::varchar;
                v_reason := v_reason || 'event_past'::varchar;
            ELSIF v_seats + r.quantity > ev.max_seats_per_user THEN
                v_status := v_status || 'rejected'::varchar;
                v_reason := v_reason || 'limit_exceeded'::varchar;
            ELSIF r.quantity > v_available THEN
                v_status := v_status || 'rejected'::varchar;
                v_reason := v_reason || 'sold_out'::varchar;
            ELSE
                v_available := v_available - r.quantity;
                v_changed := true;
                v_held := jsonb_set(v_held, ARRAY[r.user_id::text], to_jsonb(v_seats + r.quantity));
                v_status := v_status || 'confirmed'::varchar;
                v_reason := v_reason || NULL::varchar;
            END IF;
            v_left := v_left || v_available;
        END LOOP;

        UPDATE bookings b SET status = d.status, reason = d.reason, decided_at = now()
        FROM unnest(v_ids, v_status, v_reason) AS d(id, status, reason)
        WHERE b.id = d.id AND d.status <> 'cancelled';
    END IF;

    IF cardinality(v_ids) = 0 THEN
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
    SELECT b.booking_id, d.status, b.user_id, b.event_id,
           jsonb_strip_nulls(jsonb_build_object(
               'reason', d.reason, 'quantity', b.quantity, 'seats_remaining', d.seats_left,
               'batch_size', cardinality(v_ids), 'worker', p_worker))
    FROM unnest(v_ids, v_status, v_reason, v_left) WITH ORDINALITY
         AS d(id, status, reason, seats_left, n)
    JOIN bookings b ON b.id = d.id
    ORDER BY d.n;

    RETURN QUERY
    SELECT b.booking_id, b.user_id, b.quantity, d.status, d.reason, d.seats_left,
           v_available, ev.seat_capacity, v_version
    FROM unnest(v_ids, v_status, v_reason, v_left) WITH ORDINALITY
         AS d(id, status, reason, seats_left, n)
    JOIN bookings b ON b.id = d.id
    ORDER BY d.n;
END;
$$;
