-- create_booking, as migration 0011 leaves it: gone. Only the synchronous benchmark baseline
-- called it; the bench installs its own copy (bench/create_booking.sql) into the bench database.
-- Downgrade installs 0007.sql again.
DROP FUNCTION create_booking(integer, integer, varchar, integer);
