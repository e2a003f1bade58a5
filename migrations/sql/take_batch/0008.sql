-- take_batch, as migration 0008 installs it: the first step of process_event_queue. Takes the
-- event's drain lock and row lock and returns the row, or a row of NULLs if the event is gone.
--
-- One drain per event at a time is a transaction-level advisory lock on (1162957636, event id)
-- (the class is 'EBSD' in ASCII; common/bookings/procedures.py DRAIN_LOCK_CLASS reads the same
-- number from pg_locks). A call that cannot take it raises SQLSTATE 'EBUSY' at once: the task
-- leaves and its worker slot goes to another event, while the drain holding the lock decides
-- what arrived meanwhile (the signal protocol of common/bookings/signals.py). The event row is
-- still locked, waiting, against the API's short writes to it (edits and their promotions,
-- the sync baseline): every writer of the line cursor holds it.
CREATE FUNCTION take_batch(p_event_id integer) RETURNS events LANGUAGE plpgsql AS $$
DECLARE
    ev events;
BEGIN
    -- (Messages are concatenated: drivers read a percent sign in these files as a parameter.)
    IF NOT pg_try_advisory_xact_lock(1162957636, p_event_id) THEN
        RAISE EXCEPTION USING ERRCODE = 'EBUSY',
            MESSAGE = 'event ' || p_event_id || ' is being drained by another task';
    END IF;
    SELECT e.* INTO ev FROM events e WHERE e.id = p_event_id FOR NO KEY UPDATE;
    RETURN ev;
END;
$$;
