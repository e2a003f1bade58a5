-- place_in_line, as migration 0008 installs it: a request's place in its event's line from the
-- cursor (common/bookings/line.py queue_position): its number, less every number up to
-- line_through, less the numbers above that which left. LANGUAGE sql, so it is inlined.
CREATE FUNCTION place_in_line(p_seq bigint, p_through bigint, p_gone bigint[]) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT CAST(p_seq - p_through - (SELECT count(*) FROM unnest(p_gone) AS g(n) WHERE g.n < p_seq)
                AS integer)
$$;
