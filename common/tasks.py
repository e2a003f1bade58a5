"""Task and queue names: the API sends by name, the worker registers by name (Celery "Names")."""

from __future__ import annotations

PROCESS_EVENT = "bookings.process_event"
SWEEP = "bookings.sweep"

BOOKINGS_QUEUE = "bookings"
MAINTENANCE_QUEUE = "maintenance"
