-- settle_decisions, as migration 0010 installs it: 0008 returning a hold's expires_at too.
-- the steps every batch of decisions ends with,
-- in one transaction with the steps that decided it: write the rows (apply_decisions), move
-- the line (move_line), write the audit rows (log_decisions), and return the decisions as the
-- worker and the API publish them: each with the event after the batch, and a waitlisted
-- request with its place in the line. ev is the event row as the batch took it; an empty batch
-- writes nothing and returns nothing. A new kind of decision needs nothing here; a new effect
-- of every decision (an outbox row) is one more step.
CREATE FUNCTION settle_decisions(ev events, p_batch decision[], p_worker text) RETURNS TABLE (
    booking_id varchar, user_id integer, quantity integer, status varchar, reason varchar,
    seats_left integer, available_seats integer, seat_capacity integer, version bigint,
    created_at timestamptz, decided_at timestamptz, queue_seq bigint, queue_position integer,
    promoted boolean, line_through bigint, line_gone bigint[], line_waiting integer,
    waitlist_length integer, expires_at timestamptz
) LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := now();
    v_last decision := p_batch[cardinality(p_batch)];
    v_line record;
BEGIN
    IF cardinality(p_batch) = 0 THEN
        RETURN;
    END IF;
    PERFORM apply_decisions(ev, p_batch, v_now);
    SELECT * INTO v_line FROM move_line(ev, p_batch);
    PERFORM log_decisions(ev, p_batch, v_line.line_through, v_line.line_gone, p_worker);
    RETURN QUERY
    SELECT d.booking_id, d.user_id, d.quantity, d.status, d.reason, d.seats_left,
           v_last.seats_left, ev.seat_capacity, v_line.version, d.created_at,
           CASE WHEN d.status = 'waitlisted' THEN NULL ELSE v_now END, d.queue_seq,
           CASE WHEN d.status = 'waitlisted'
                THEN place_in_line(d.queue_seq, v_line.line_through, v_line.line_gone) END,
           d.promoted, v_line.line_through, v_line.line_gone, v_line.line_waiting,
           v_last.waitlist_left,
           CASE WHEN d.status = 'held' THEN v_now + ev.hold_seconds * interval '1 second' END
    FROM unnest(p_batch) WITH ORDINALITY AS d
    ORDER BY d.ordinality;
END;
$$;
