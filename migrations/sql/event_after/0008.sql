-- event_after, as migration 0008 installs it: the event as a batch of decisions leaves it, for
-- the next step to read: its free seats and waitlist length are the batch's last decision's.
-- Nothing else of the row moves while a batch is decided.
CREATE FUNCTION event_after(ev events, p_batch decision[]) RETURNS events
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF cardinality(p_batch) > 0 THEN
        ev.available_seats := p_batch[cardinality(p_batch)].seats_left;
        ev.waitlist_length := p_batch[cardinality(p_batch)].waitlist_left;
    END IF;
    RETURN ev;
END;
$$;
