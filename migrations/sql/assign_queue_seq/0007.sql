-- assign_queue_seq, as migration 0007 installs it: the BEFORE INSERT trigger of bookings that
-- numbers each event's requests in arrival order (1, 2, 3, ... per event, no gaps among
-- committed rows). The counter is event_lines.arrived, a row of its own so that taking a number
-- never waits for the decider (which holds the events row while it decides a batch). The row
-- lock it takes is held until the inserting transaction ends, so an event's requests commit in
-- the order of their numbers: a drain that sees number n has seen every number below it.
-- An event that is gone gets 0 and the foreign key check refuses the row as before.
CREATE OR REPLACE FUNCTION assign_queue_seq() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE event_lines l SET arrived = l.arrived + 1 WHERE l.event_id = NEW.event_id
    RETURNING l.arrived INTO NEW.queue_seq;
    NEW.queue_seq := coalesce(NEW.queue_seq, 0);
    RETURN NEW;
END;
$$;
