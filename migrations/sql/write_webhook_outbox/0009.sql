-- write_webhook_outbox, as migration 0008 installs it: the AFTER INSERT statement trigger of
-- booking_logs. Every decision writes its audit row in the transaction that makes it (the
-- decider's batch, a promotion by the API, the synchronous baseline), so the webhook messages
-- written here commit or roll back with the decision itself: the transactional outbox. One row
-- per decision and subscribed endpoint; the payload is built from the audit row at delivery.
-- A log action becomes the type 'booking.<action>' (common/webhooks/messages.py, EVENT_TYPES).
CREATE OR REPLACE FUNCTION write_webhook_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Most sales have no endpoint: one look at a table of a few rows, and nothing more.
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints WHERE enabled) THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_messages (endpoint_id, log_id, event_type)
    SELECT e.id, n.id, 'booking.' || n.action
    FROM decided n
    JOIN webhook_endpoints e ON e.enabled
         AND (e.event_id IS NULL OR e.event_id = n.event_id)
         AND (e.event_types IS NULL OR 'booking.' || n.action = ANY (e.event_types))
    ORDER BY n.id, e.id;
    RETURN NULL;
END;
$$;
