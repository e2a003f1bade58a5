"""Task and queue names: the API sends by name, the worker registers by name (Celery "Names")."""

from __future__ import annotations

PROCESS_EVENT = "bookings.process_event"
SWEEP = "bookings.sweep"
WARN_HOLDS = "bookings.warn_holds"
DELIVER_WEBHOOKS = "webhooks.deliver"
SWEEP_WEBHOOKS = "webhooks.sweep"

BOOKINGS_QUEUE = "bookings"
MAINTENANCE_QUEUE = "maintenance"
# Deliveries wait on other people's servers: a queue of their own, never ahead of decisions.
WEBHOOKS_QUEUE = "webhooks"
