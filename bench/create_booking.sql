-- The synchronous baseline's single-booking procedure: the body migration 0007 installed
-- (migrations/sql/create_booking/0007.sql) until 0011 dropped it from the product. Only the
-- benchmark calls it, so the bench installs it (bench/stack.py, prepare_database) after the
-- migrations, in a schema of its own: the product's schema and its checks never see it, and a
-- rule change never has to touch it. It asks booking_verdict, so it books by the product's
-- rules as they are at head.
--
-- Its rows are inserted already decided, so each leaves its event's line at once and the line
-- cursor moves with it (line_after), or every later place in line would be one too far back.
-- This design books within the request and has no waitlist: a request the rules would waitlist
-- is sold out, as is any while somebody waits on the event's waitlist (nobody passes it). The
-- seats held for the per-user limit are the user's confirmed and waitlisted seats.
CREATE SCHEMA IF NOT EXISTS bench;

CREATE OR REPLACE FUNCTION bench.create_booking(
    p_user_id integer, p_event_id integer, p_booking_id varchar, p_quantity integer DEFAULT 1
) RETURNS varchar LANGUAGE plpgsql AS $$
DECLARE
    ev events;
    v_held integer;
    v_reason varchar;
    v_seq bigint;
    v_seats integer;
BEGIN
    SELECT e.* INTO ev
    FROM events e WHERE e.id = p_event_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN 'not_found';
    END IF;
    SELECT coalesce(sum(b.quantity), 0) INTO v_held FROM bookings b
    WHERE b.event_id = p_event_id AND b.user_id = p_user_id
      AND b.status IN ('confirmed', 'waitlisted');
    v_seats := CASE WHEN ev.waitlist_length > 0 THEN 0 ELSE ev.available_seats END;
    v_reason := nullif(booking_verdict(ev, p_quantity, v_seats, v_held), 'confirmed');
    IF v_reason = 'waitlisted' THEN
        v_reason := 'sold_out';
    END IF;
    IF v_reason IS NOT NULL THEN
        INSERT INTO bookings (booking_id, user_id, event_id, quantity, status, reason, decided_at)
        VALUES (p_booking_id, p_user_id, p_event_id, p_quantity, 'rejected', v_reason, now())
        RETURNING queue_seq INTO v_seq;
        UPDATE events e SET line_through = l.line_through, line_gone = l.line_gone
        FROM line_after(p_event_id, ev.line_gone, ARRAY[v_seq], ev.line_through) l
        WHERE e.id = p_event_id;
        INSERT INTO booking_logs (booking_id, action, user_id, event_id, details)
        VALUES (p_booking_id, 'rejected', p_user_id, p_event_id,
                jsonb_build_object('reason', v_reason, 'quantity', p_quantity,
                                   'seats_remaining', ev.available_seats));
        RETURN v_reason;
    END IF;
    INSERT INTO bookings (booking_id, user_id, event_id, quantity, status, decided_at)
    VALUES (p_booking_id, p_user_id, p_event_id, p_quantity, 'confirmed', now())
    RETURNING queue_seq INTO v_seq;
    UPDATE events e SET available_seats = e.available_seats - p_quantity,
                        version = e.version + 1, updated_at = now(),
                        line_through = l.line_through, line_gone = l.line_gone
    FROM line_after(p_event_id, ev.line_gone, ARRAY[v_seq], ev.line_through) l
    WHERE e.id = p_event_id;
    INSERT INTO booking_logs (booking_id, action, user_id, event_id, details)
    VALUES (p_booking_id, 'confirmed', p_user_id, p_event_id,
            jsonb_build_object('quantity', p_quantity,
                               'seats_remaining', ev.available_seats - p_quantity));
    RETURN 'confirmed';
END;
$$;
