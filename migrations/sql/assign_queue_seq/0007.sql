-- assign_queue_seq, as migration 0007 installs it: the BEFORE INSERT trigger of bookings that
-- numbers each event's requests in arrival order (1, 2, 3, ... per event, no gaps among
-- committed rows). The counter is event_lines.arrived, a row of its own so that taking a number
-- never waits for the decider (which holds the events row while it decides a batch).
--
-- The first row of an event in a transaction locks its counter (FOR NO KEY UPDATE, held until
-- the transaction ends, so an event's requests commit in the order of their numbers: a drain
-- that sees number n has seen every number below it) and reads it; the numbers the transaction
-- gives go on in a transaction-local setting, and the statement trigger count_arrivals writes
-- the last one back once per statement. (An UPDATE of the counter per row made one row version
-- per request, each found by walking all the earlier ones: quadratic in a large INSERT.)
-- An event that is gone gets 0 and the foreign key check refuses the row as before.
CREATE OR REPLACE FUNCTION assign_queue_seq() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_key text := 'ebs.arrived_' || NEW.event_id;
    v_last text := current_setting(v_key, true);
BEGIN
    IF v_last IS NULL OR v_last = '' THEN
        SELECT l.arrived INTO v_last FROM event_lines l WHERE l.event_id = NEW.event_id
        FOR NO KEY UPDATE;
        IF NOT FOUND THEN
            NEW.queue_seq := 0;
            RETURN NEW;
        END IF;
    END IF;
    NEW.queue_seq := v_last::bigint + 1;
    PERFORM set_config(v_key, NEW.queue_seq::text, true);
    RETURN NEW;
END;
$$;
