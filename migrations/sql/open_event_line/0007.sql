-- open_event_line, as migration 0007 installs it: the AFTER INSERT trigger of events that gives
-- each new event its arrival counter (event_lines), which assign_queue_seq counts up.
CREATE OR REPLACE FUNCTION open_event_line() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_lines (event_id, arrived) VALUES (NEW.id, 0);
    RETURN NULL;
END;
$$;
