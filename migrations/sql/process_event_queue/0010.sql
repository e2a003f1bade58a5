-- process_event_queue, as migration 0010 installs it: 0008 with holds (decide_expiries after the
-- cancellations, so the seats of expired holds go to the waitlist in the same transaction, and
-- hold_decisions before settling). One batch of at most p_limit decisions of
-- an event, in one transaction and one round trip, as a list of steps (docs/DATABASE-SCHEMA.md,
-- "The decider"):
--
-- 1. take_batch: the event's drain lock (EBUSY if another drain holds it) and row lock;
-- 2. decide_cancellations: cancellations asked for;
--    decide_expiries: holds past their expires_at;
-- 3. the waitlist: decide_waitlist_past once the event has started, else decide_promotions;
-- 4. decide_requests: pending requests in arrival order, as booking_verdict says;
-- 5. hold_decisions: on an event with holdSeconds, what would be confirmed is held;
-- 6. settle_decisions: write the rows, move the line, write the audit rows, return the batch.
--
-- A decide step reads the event as the steps before it left it (event_after: free seats and
-- waitlist length) and returns its decisions in order, each of the composite type decision
-- with the seats and waitlist length after it; the batch is one array of them. A new kind of
-- decision is one more step here, within what is left of p_limit (promotions excepted).
CREATE FUNCTION process_event_queue(
    p_event_id integer, p_limit integer, p_worker text
) RETURNS TABLE (
    booking_id varchar, user_id integer, quantity integer, status varchar, reason varchar,
    seats_left integer, available_seats integer, seat_capacity integer, version bigint,
    created_at timestamptz, decided_at timestamptz, queue_seq bigint, queue_position integer,
    promoted boolean, line_through bigint, line_gone bigint[], line_waiting integer,
    waitlist_length integer, expires_at timestamptz
) LANGUAGE plpgsql AS $$
DECLARE
    taken events := take_batch(p_event_id);
    ev events := taken;
    v_batch decision[];
BEGIN
    IF taken.id IS NULL THEN
        RETURN;
    END IF;
    v_batch := ARRAY(SELECT d FROM decide_cancellations(ev, p_limit) d);
    IF cardinality(v_batch) < p_limit THEN
        v_batch := v_batch || ARRAY(
            SELECT d FROM decide_expiries(event_after(ev, v_batch),
                                          p_limit - cardinality(v_batch)) d);
    END IF;
    ev := event_after(ev, v_batch);
    IF ev.waitlist_length > 0 AND ev.event_date <= now() THEN
        IF cardinality(v_batch) < p_limit THEN
            v_batch := v_batch || ARRAY(
                SELECT d FROM decide_waitlist_past(ev, p_limit - cardinality(v_batch)) d);
        END IF;
    ELSIF ev.waitlist_length > 0 THEN
        -- Seats the cancellations and expiries free go to the waitlist in this transaction even
        -- when they filled p_limit (nobody waits while seats are free): one more per free seat.
        v_batch := v_batch || ARRAY(SELECT d FROM decide_promotions(ev, ev.available_seats) d);
    END IF;
    ev := event_after(ev, v_batch);
    IF cardinality(v_batch) < p_limit THEN
        v_batch := v_batch || ARRAY(
            SELECT d FROM decide_requests(ev, v_batch, p_limit - cardinality(v_batch)) d);
    END IF;
    RETURN QUERY SELECT * FROM settle_decisions(taken, hold_decisions(taken, v_batch), p_worker);
END;
$$;
