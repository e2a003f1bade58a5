-- log_decisions, as migration 0010 installs it: 0008 with a hold's expires_at in its details.
-- one booking_logs row per decision of a batch, in
-- its order: the action is the new status ('promoted' for a promotion), with the reason, the
-- quantity, the seats left after it, its place in the line after the batch (a waitlisted
-- request), the batch's size and who decided.
CREATE FUNCTION log_decisions(
    ev events, p_batch decision[], p_through bigint, p_gone bigint[], p_worker text
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO booking_logs (booking_id, action, user_id, event_id, details)
    SELECT d.booking_id, CASE WHEN d.promoted THEN 'promoted' ELSE d.status END, d.user_id, ev.id,
           jsonb_strip_nulls(jsonb_build_object(
               'reason', d.reason, 'quantity', d.quantity, 'seats_remaining', d.seats_left,
               'queue_position', CASE WHEN d.status = 'waitlisted'
                                      THEN place_in_line(d.queue_seq, p_through, p_gone) END,
               'expires_at', CASE WHEN d.status = 'held'
                                  THEN now() + ev.hold_seconds * interval '1 second' END,
               'batch_size', cardinality(p_batch), 'worker', p_worker))
    FROM unnest(p_batch) WITH ORDINALITY AS d
    ORDER BY d.ordinality;
END;
$$;
