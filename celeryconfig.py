"""Celery configuration, read from the shared settings (``config_from_object("celeryconfig")``).

Delivery is at least once: a task is acknowledged after it ran (``acks_late``) and requeued if
its process dies (``task_reject_on_worker_lost``); every task's effect is idempotent in
PostgreSQL, so a second delivery changes nothing. The broker is Redis (``REDIS_URL``) unless
``CELERY_BROKER_URL`` names another, e.g. RabbitMQ (docs/OPERATIONS.md, "Brokers"). With Redis,
the hard time limit stays well below the visibility timeout, so a task still running is never
handed to a second worker by the broker; RabbitMQ redelivers only when the consumer's
connection closes, and ignores the option.

A hold's expiry drain is a task with an ``eta`` at the hold's end (common/bookings/holds.py):
the worker fetches it at once and keeps it unacknowledged until then. The Redis transport
hands a message unacknowledged longer than the visibility timeout (an hour by default) to
another worker (Celery docs, "Using Redis", "Caveats"), so such a task is sent only within
``HOLD_TIMER_HORIZON`` (10 minutes) of its time, and the timeout keeps its default: a dead
worker's other tasks come back within the hour, not the longest hold.
"""

from kombu import Queue

from common.settings import get_settings
from common.tasks import (
    BOOKINGS_QUEUE,
    DELIVER_WEBHOOKS,
    MAINTENANCE_QUEUE,
    PROCESS_EVENT,
    SWEEP,
    SWEEP_WEBHOOKS,
    WARN_HOLDS,
    WEBHOOKS_QUEUE,
)

_settings = get_settings()

broker_url = _settings.broker_url
result_backend = None
task_ignore_result = True

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]

task_acks_late = True
task_reject_on_worker_lost = True
task_time_limit = 120
task_soft_time_limit = 100
broker_connection_retry_on_startup = True

worker_prefetch_multiplier = 1
worker_send_task_events = True
task_send_sent_event = True
worker_hijack_root_logger = False

task_default_queue = BOOKINGS_QUEUE
task_queues = (Queue(BOOKINGS_QUEUE), Queue(MAINTENANCE_QUEUE), Queue(WEBHOOKS_QUEUE))
task_routes = {
    PROCESS_EVENT: {"queue": BOOKINGS_QUEUE},
    SWEEP: {"queue": MAINTENANCE_QUEUE},
    WARN_HOLDS: {"queue": BOOKINGS_QUEUE},
    DELIVER_WEBHOOKS: {"queue": WEBHOOKS_QUEUE},
    SWEEP_WEBHOOKS: {"queue": MAINTENANCE_QUEUE},
}

beat_schedule = {
    "sweep-pending-bookings": {
        "task": SWEEP,
        "schedule": _settings.SWEEP_INTERVAL,
        "options": {"queue": MAINTENANCE_QUEUE, "expires": _settings.SWEEP_INTERVAL},
    },
    "sweep-webhooks": {
        "task": SWEEP_WEBHOOKS,
        "schedule": _settings.WEBHOOK_SWEEP_INTERVAL,
        "options": {"queue": MAINTENANCE_QUEUE, "expires": _settings.WEBHOOK_SWEEP_INTERVAL},
    },
}
