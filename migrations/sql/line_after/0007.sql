-- line_after, as migration 0007 installs it: an event's line cursor once some requests have left
-- the line (common/bookings/line.py). Called, after the rows have moved, by whoever moves
-- requests out of the line, in the same transaction and under the event row lock:
-- process_event_queue, promote_waitlist, create_booking. p_gone is the event's line_gone
-- before, p_left the numbers that left now. line_through becomes the first number still in
-- line less one (the heads of idx_bookings_pending and idx_bookings_waitlisted: two index
-- lookups, never a scan), or every number given so far when the line is empty; line_gone keeps
-- the numbers above it that left; line_waiting is the line's length. One statement, so the
-- counter and the rows are read in one snapshot (requests commit in number order, so a
-- snapshot that sees number n sees every number below it).
CREATE FUNCTION line_after(p_event_id integer, p_gone bigint[], p_left bigint[])
RETURNS TABLE (line_through bigint, line_gone bigint[], line_waiting integer)
LANGUAGE sql STABLE AS $$
    WITH cursor AS (
        SELECT l.arrived, coalesce(least(
            (SELECT min(b.queue_seq) FROM bookings b
             WHERE b.event_id = p_event_id AND b.status = 'pending'),
            (SELECT min(b.queue_seq) FROM bookings b
             WHERE b.event_id = p_event_id AND b.status = 'waitlisted')) - 1,
            l.arrived) AS through
        FROM event_lines l WHERE l.event_id = p_event_id
    ), moved AS (
        SELECT c.arrived, c.through, ARRAY(
            SELECT DISTINCT g.n FROM unnest(p_gone || p_left) AS g(n) WHERE g.n > c.through
            ORDER BY g.n) AS gone
        FROM cursor c
    )
    SELECT m.through, m.gone, CAST(m.arrived - m.through - cardinality(m.gone) AS integer)
    FROM moved m
$$;
