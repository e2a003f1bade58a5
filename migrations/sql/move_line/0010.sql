-- move_line, as migration 0010 installs it: 0008 with holds (a held booking left the line when
-- it was held, so neither its cancellation nor its expiry moves the cursor). The event row after a batch whose rows are written
-- (apply_decisions): its seats and waitlist length are the last decision's, its version moves
-- when seats moved (one version per batch; a batch that only moved the line keeps it), and its
-- line cursor is line_after's. Numbers that left the line now: every decided one but those
-- waitlisted and the confirmed or held that leave. Every pending request up to the last the batch
-- decided was decided (in number order), but those with a cancellation asked, which
-- line_after looks at apart. ev is the row as the batch took it.
CREATE FUNCTION move_line(ev events, p_batch decision[]) RETURNS TABLE (
    version bigint, line_through bigint, line_gone bigint[], line_waiting integer
) LANGUAGE plpgsql AS $$
DECLARE
    v_last decision := p_batch[cardinality(p_batch)];
    v_through bigint;
    v_gone bigint[];
    v_waiting integer;
    v_version bigint;
BEGIN
    SELECT l.line_through, l.line_gone, l.line_waiting INTO v_through, v_gone, v_waiting
    FROM line_after(ev.id, ev.line_gone,
        ARRAY(SELECT d.queue_seq FROM unnest(p_batch) d
              WHERE d.status <> 'waitlisted' AND d.prev NOT IN ('confirmed', 'held')),
        greatest(ev.line_through, (SELECT max(d.queue_seq) FROM unnest(p_batch) d
                                   WHERE d.prev = 'pending' AND d.status <> 'cancelled'))) l;
    UPDATE events e SET available_seats = v_last.seats_left,
           version = e.version + CASE WHEN EXISTS (
               SELECT FROM unnest(p_batch) d WHERE d.prev IN ('confirmed', 'held') OR d.status IN ('confirmed', 'held')
           ) THEN 1 ELSE 0 END,
           line_through = v_through, line_gone = v_gone, waitlist_length = v_last.waitlist_left,
           updated_at = now()
    WHERE e.id = ev.id
    RETURNING e.version INTO v_version;
    RETURN QUERY SELECT v_version, v_through, v_gone, v_waiting;
END;
$$;
