-- cancel_booking, as migration 0002 installs it: cancels a confirmed booking at once.
CREATE OR REPLACE FUNCTION cancel_booking(p_booking_id varchar) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    bk record;
    v_left integer;
BEGIN
    SELECT b.id, b.user_id, b.event_id, b.quantity INTO bk FROM bookings b
    WHERE b.booking_id = p_booking_id AND b.status = 'confirmed' FOR UPDATE;
    IF NOT FOUND THEN
        RETURN FALSE;
    END IF;
    UPDATE bookings SET status = 'cancelled', cancelled_at = now() WHERE id = bk.id;
    UPDATE events SET available_seats = available_seats + bk.quantity, version = version + 1,
                      updated_at = now()
    WHERE id = bk.event_id RETURNING available_seats INTO v_left;
    INSERT INTO booking_logs (booking_id, action, user_id, event_id, details)
    VALUES (p_booking_id, 'cancelled', bk.user_id, bk.event_id,
            jsonb_build_object('quantity', bk.quantity, 'seats_remaining', v_left));
    RETURN TRUE;
END;
$$;
