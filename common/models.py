"""Every table, imported in one place so Alembic and relationships see the whole metadata."""

from common.bookings.models import Booking, BookingLog
from common.db import Base
from common.events.models import Event
from common.payments.models import PaymentCallback
from common.users.models import User
from common.webhooks.models import WebhookAttempt, WebhookEndpoint, WebhookMessage

__all__ = [
    "Base",
    "Booking",
    "BookingLog",
    "Event",
    "PaymentCallback",
    "User",
    "WebhookAttempt",
    "WebhookEndpoint",
    "WebhookMessage",
]
