-- line_after, as migration 0007 installs it: an event's line cursor once some requests have left
-- the line (common/bookings/line.py). Called, after the rows have moved, by whoever moves
-- requests out of the line, in the same transaction and under the event row lock:
-- process_event_queue, promote_waitlist, create_booking. p_gone is the event's line_gone
-- before, p_left the numbers that left now. line_through becomes the first number still in
-- line less one, or every number given so far when the line is empty; line_gone keeps the
-- numbers above it that left; line_waiting is the line's length. One statement, so the counter
-- and the rows are read in one snapshot (requests commit in number order, so a snapshot that
-- sees number n sees every number below it).
--
-- The first number in line is three index lookups, never a scan: the head of
-- idx_bookings_waitlisted; the head of idx_bookings_pending above p_after, which the caller
-- vouches for (no pending request numbered up to it without a cancellation asked: the event's
-- old line_through, or the last number its batch decided); and the pending requests with a
-- cancellation asked (idx_bookings_cancel_requested, a handful). Without p_after the lookup
-- would step over every entry the caller's batch just decided, each a heap visit (the batch's
-- own updates are not dead yet). The two heads are ORDER BY ... LIMIT 1, not min(): with
-- statistics taken before a sale filled the table (a row estimate of 1), the planner read min()
-- as an aggregate over every index entry of the event, the whole waitlist, at each call (18 ms
-- a batch with 17,800 waiting), and the plan cached for the session kept it so. PL/pgSQL, not
-- SQL, for its cached plan: as a SQL function it was planned on every call, ~1.8 ms of a flash
-- sale's batch of 500.
CREATE FUNCTION line_after(
    p_event_id integer, p_gone bigint[], p_left bigint[], p_after bigint
)
RETURNS TABLE (line_through bigint, line_gone bigint[], line_waiting integer)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    WITH head AS (
        SELECT l.arrived, coalesce(least(
            (SELECT b.queue_seq FROM bookings b
             WHERE b.event_id = p_event_id AND b.status = 'pending' AND b.queue_seq > p_after
             ORDER BY b.queue_seq LIMIT 1),
            (SELECT min(b.queue_seq) FROM bookings b
             WHERE b.event_id = p_event_id AND b.status = 'pending'
               AND b.cancel_requested_at IS NOT NULL),
            (SELECT b.queue_seq FROM bookings b
             WHERE b.event_id = p_event_id AND b.status = 'waitlisted'
             ORDER BY b.queue_seq LIMIT 1)) - 1,
            l.arrived) AS through
        FROM event_lines l WHERE l.event_id = p_event_id
    ), moved AS (
        SELECT c.arrived, c.through, ARRAY(
            SELECT DISTINCT g.n FROM unnest(p_gone || p_left) AS g(n) WHERE g.n > c.through
            ORDER BY g.n) AS gone
        FROM head c
    )
    SELECT m.through, m.gone, CAST(m.arrived - m.through - cardinality(m.gone) AS integer)
    FROM moved m;
END;
$$;
