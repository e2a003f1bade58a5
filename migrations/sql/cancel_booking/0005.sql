-- cancel_booking, as migration 0005 leaves it: gone. Nothing called it (cancellations are asked
-- for by the API and done by process_event_queue); downgrade installs 0002.sql again.
DROP FUNCTION cancel_booking(varchar);
