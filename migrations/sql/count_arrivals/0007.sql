-- count_arrivals, as migration 0007 installs it: the AFTER INSERT statement trigger of bookings
-- that writes back, once per event per statement, the last number assign_queue_seq gave. The
-- counter row is already locked by this transaction (assign_queue_seq).
CREATE OR REPLACE FUNCTION count_arrivals() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE event_lines l SET arrived = m.last
    FROM (SELECT a.event_id, max(a.queue_seq) AS last FROM arrivals a GROUP BY a.event_id) m
    WHERE l.event_id = m.event_id AND l.arrived < m.last;
    RETURN NULL;
END;
$$;
