-- waitlist_violations, as migration 0008 installs it: 0007 with oversized_waitlist. What
-- `ebs check` finds wrong with the waiting room, one row per event and problem; empty when all
-- is well.
--   stuck_waitlist  the event has not started and the head of its waitlist fits the free
--                   seats: somebody waits while seats are free (every transaction that frees
--                   seats promotes in it, so this is never right, even for a moment);
--   line_cursor     line_through / line_gone disagree with the rows (common/bookings/line.py:
--                   every number up to line_through has left the line, line_gone is exactly
--                   the numbers above it that have);
--   waitlist_length waitlist_length is not the number of waitlisted requests;
--   oversized_waitlist the event has not started and a waitlisted request wants more seats
--                   than it holds: it could never be met and, at the head, holds the line
--                   forever (a capacity edit rejects such requests in its transaction:
--                   decide_oversized_waitlist).
-- found/expected say what the event holds and what the rows say. Reads every event's line and
-- the requests above its cursor once.
CREATE FUNCTION waitlist_violations()
RETURNS TABLE (event_id integer, problem varchar, found text, expected text)
LANGUAGE sql STABLE AS $$
    WITH line AS (
        SELECT e.id, e.event_date, e.available_seats, e.line_through, e.line_gone,
               e.waitlist_length, l.arrived,
               (SELECT min(b.queue_seq) FROM bookings b
                WHERE b.event_id = e.id AND b.status IN ('pending', 'waitlisted')) AS first_in_line,
               (SELECT count(*) FROM bookings b
                WHERE b.event_id = e.id AND b.status = 'waitlisted') AS waitlisted,
               (SELECT b.quantity FROM bookings b
                WHERE b.event_id = e.id AND b.status = 'waitlisted'
                ORDER BY b.queue_seq LIMIT 1) AS head_quantity,
               (SELECT max(b.quantity) FROM bookings b
                WHERE b.event_id = e.id AND b.status = 'waitlisted') AS most_wanted,
               e.seat_capacity
        FROM events e JOIN event_lines l ON l.event_id = e.id
    ), cursor AS (
        SELECT line.*, coalesce(line.first_in_line - 1, line.arrived) AS through
        FROM line
    ), checked AS (
        SELECT c.*, ARRAY(
            SELECT b.queue_seq FROM bookings b
            WHERE b.event_id = c.id AND b.queue_seq > c.through
              AND b.status NOT IN ('pending', 'waitlisted')
            ORDER BY b.queue_seq) AS gone
        FROM cursor c
    )
    SELECT k.id, CAST('stuck_waitlist' AS varchar),
           'head wants ' || k.head_quantity || ' seats', k.available_seats || ' seats free'
    FROM checked k WHERE k.event_date > now() AND k.head_quantity <= k.available_seats
    UNION ALL
    SELECT k.id, 'line_cursor', k.line_through || ' ' || CAST(k.line_gone AS text),
           k.through || ' ' || CAST(k.gone AS text)
    FROM checked k WHERE k.line_through <> k.through OR k.line_gone <> k.gone
    UNION ALL
    SELECT k.id, 'waitlist_length', CAST(k.waitlist_length AS text), CAST(k.waitlisted AS text)
    FROM checked k WHERE k.waitlist_length <> k.waitlisted
    UNION ALL
    SELECT k.id, 'oversized_waitlist', 'a request waits for ' || k.most_wanted || ' seats',
           'at most ' || k.seat_capacity || ' (the capacity)'
    FROM checked k WHERE k.event_date > now() AND k.most_wanted > k.seat_capacity
    ORDER BY 1, 2
$$;
