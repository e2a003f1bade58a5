-- create_booking, as migration 0002 installs it (and 0004 downgrades to).
-- The seed's synchronous design, adapted to quantities, the per-user limit and versions: the
-- request itself books under the event row lock, one transaction per booking. Only the
-- benchmark baseline calls it.
CREATE OR REPLACE FUNCTION create_booking(
    p_user_id integer, p_event_id integer, p_booking_id varchar, p_quantity integer DEFAULT 1
) RETURNS varchar LANGUAGE plpgsql AS $$
DECLARE
    ev record;
    v_held integer;
    v_reason varchar;
BEGIN
    SELECT e.available_seats, e.event_date, e.max_seats_per_user INTO ev
    FROM events e WHERE e.id = p_event_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'not_found';
    END IF;
    SELECT coalesce(sum(b.quantity), 0) INTO v_held FROM bookings b
    WHERE b.event_id = p_event_id AND b.user_id = p_user_id AND b.status = 'confirmed';
    IF ev.event_date <= now() THEN
        v_reason := 'event_past';
    ELSIF v_held + p_quantity > ev.max_seats_per_user THEN
        v_reason := 'limit_exceeded';
    ELSIF ev.available_seats < p_quantity THEN
        v_reason := 'sold_out';
    END IF;
    IF v_reason IS NOT NULL THEN
        INSERT INTO bookings (booking_id, user_id, event_id, quantity, status, reason, decided_at)
        VALUES (p_booking_id, p_user_id, p_event_id, p_quantity, 'rejected', v_reason, now());
        INSERT INTO booking_logs (booking_id, action, user_id, event_id, details)
        VALUES (p_booking_id, 'rejected', p_user_id, p_event_id,
                jsonb_build_object('reason', v_reason, 'quantity', p_quantity,
                                   'seats_remaining', ev.available_seats));
        RETURN v_reason;
    END IF;
    INSERT INTO bookings (booking_id, user_id, event_id, quantity, status, decided_at)
    VALUES (p_booking_id, p_user_id, p_event_id, p_quantity, 'confirmed', now());
    UPDATE events SET available_seats = available_seats - p_quantity, version = version + 1,
                      updated_at = now()
    WHERE id = p_event_id;
    INSERT INTO booking_logs (booking_id, action, user_id, event_id, details)
    VALUES (p_booking_id, 'confirmed', p_user_id, p_event_id,
            jsonb_build_object('quantity', p_quantity,
                               'seats_remaining', ev.available_seats - p_quantity));
    RETURN 'confirmed';
END;
$$;
