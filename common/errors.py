"""Domain errors. Raised anywhere below ``api/``; rendered by one handler in ``api.errors``.

Every error carries an HTTP status and a stable ``code`` (listed in docs/ERROR-CODES.md):

DomainError (500 INTERNAL_ERROR)
├── ValidationFailed (400 VALIDATION_ERROR)
│   └── DestinationRefused (400 WEBHOOK_URL_REFUSED)
├── Unauthorized (401 UNAUTHORIZED)
│   ├── InvalidCredentials (401 INVALID_CREDENTIALS)
│   ├── InvalidToken (401 INVALID_TOKEN)
│   ├── PaymentSignatureInvalid (401 PAYMENT_SIGNATURE_INVALID)
│   └── PaymentTimestampStale (401 PAYMENT_TIMESTAMP_STALE)
├── Forbidden (403 FORBIDDEN)
├── NotFound (404 NOT_FOUND)
│   ├── EventNotFound (404 EVENT_NOT_FOUND)
│   ├── BookingNotFound (404 BOOKING_NOT_FOUND)
│   ├── WebhookNotFound (404 WEBHOOK_NOT_FOUND)
│   └── WebhookMessageNotFound (404 WEBHOOK_MESSAGE_NOT_FOUND)
├── Conflict (409 CONFLICT)
│   ├── EmailTaken (409 EMAIL_TAKEN)
│   ├── EventPast (409 EVENT_PAST)
│   ├── EventHasBookings (409 EVENT_HAS_BOOKINGS)
│   ├── CapacityBelowBooked (409 CAPACITY_BELOW_BOOKED)
│   ├── SoldOut (409 SOLD_OUT)
│   ├── LimitExceeded (409 LIMIT_EXCEEDED)
│   ├── CapacityLowered (409 CAPACITY_LOWERED)
│   ├── AlreadyCancelled (409 ALREADY_CANCELLED)
│   ├── BookingRejected (409 BOOKING_REJECTED)
│   ├── HoldExpired (409 HOLD_EXPIRED)
│   ├── NotHeld (409 NOT_HELD)
│   └── IdempotencyKeyReused (409 IDEMPOTENCY_KEY_REUSED)
├── PayloadTooLarge (413 PAYLOAD_TOO_LARGE)
├── TooManyRequests (429 TOO_MANY_REQUESTS)
│   ├── TooManyLoginAttempts (429 TOO_MANY_LOGIN_ATTEMPTS)
│   ├── TooManySignUps (429 TOO_MANY_SIGNUPS)
│   └── TooManyPending (429 TOO_MANY_PENDING)
└── ServiceUnavailable (503 SERVICE_UNAVAILABLE)
    ├── QueueFull (503 QUEUE_FULL)
    └── PaymentsNotConfigured (503 PAYMENTS_NOT_CONFIGURED)
"""

from __future__ import annotations

from typing import Any, ClassVar


class DomainError(Exception):
    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "INTERNAL_ERROR"
    default_message: ClassVar[str] = "Internal server error"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.details = details or []
        self.headers = headers or {}
        super().__init__(self.message)


class ValidationFailed(DomainError):
    status_code = 400
    code = "VALIDATION_ERROR"
    default_message = "Request validation failed"


class DestinationRefused(ValidationFailed):
    code = "WEBHOOK_URL_REFUSED"
    default_message = "Webhooks cannot go to this address"


class Unauthorized(DomainError):
    status_code = 401
    code = "UNAUTHORIZED"
    default_message = "Authentication required"

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(message, **kwargs)


class InvalidCredentials(Unauthorized):
    code = "INVALID_CREDENTIALS"
    default_message = "Invalid email or password"


class InvalidToken(Unauthorized):
    code = "INVALID_TOKEN"
    default_message = "Invalid or expired token"


class PaymentSignatureInvalid(Unauthorized):
    code = "PAYMENT_SIGNATURE_INVALID"
    default_message = "The payment callback's Standard Webhooks signature does not verify"


class PaymentTimestampStale(Unauthorized):
    code = "PAYMENT_TIMESTAMP_STALE"
    default_message = "The payment callback's webhook-timestamp is outside the tolerance"


class Forbidden(DomainError):
    status_code = 403
    code = "FORBIDDEN"
    default_message = "You do not have permission to do this"


class NotFound(DomainError):
    status_code = 404
    code = "NOT_FOUND"
    default_message = "Not found"


class EventNotFound(NotFound):
    code = "EVENT_NOT_FOUND"
    default_message = "Event not found"


class BookingNotFound(NotFound):
    code = "BOOKING_NOT_FOUND"
    default_message = "Booking not found"


class WebhookNotFound(NotFound):
    code = "WEBHOOK_NOT_FOUND"
    default_message = "Webhook endpoint not found"


class WebhookMessageNotFound(NotFound):
    code = "WEBHOOK_MESSAGE_NOT_FOUND"
    default_message = "Webhook message not found"


class Conflict(DomainError):
    status_code = 409
    code = "CONFLICT"
    default_message = "Conflict"


class EmailTaken(Conflict):
    code = "EMAIL_TAKEN"
    default_message = "A user with this email already exists"


class EventPast(Conflict):
    code = "EVENT_PAST"
    default_message = "The event has already started"


class EventHasBookings(Conflict):
    code = "EVENT_HAS_BOOKINGS"
    default_message = "The event has confirmed, pending or waitlisted bookings"


class CapacityBelowBooked(Conflict):
    code = "CAPACITY_BELOW_BOOKED"
    default_message = "Seat capacity cannot be lower than the seats already booked"


class SoldOut(Conflict):
    code = "SOLD_OUT"
    default_message = "Not enough seats left for this booking"


class LimitExceeded(Conflict):
    code = "LIMIT_EXCEEDED"
    default_message = "This booking would exceed the per-user seat limit for the event"


class CapacityLowered(Conflict):
    code = "CAPACITY_LOWERED"
    default_message = "The event's capacity was lowered below the seats this request waited for"


class AlreadyCancelled(Conflict):
    code = "ALREADY_CANCELLED"
    default_message = "The booking is already cancelled"


class BookingRejected(Conflict):
    code = "BOOKING_REJECTED"
    default_message = "The booking was rejected and cannot be cancelled"


class HoldExpired(Conflict):
    code = "HOLD_EXPIRED"
    default_message = "The hold has expired: its seats went back on sale"


class NotHeld(Conflict):
    code = "NOT_HELD"
    default_message = "The booking is not held: there is nothing to confirm"


class IdempotencyKeyReused(Conflict):
    code = "IDEMPOTENCY_KEY_REUSED"
    default_message = "This Idempotency-Key was already used with a different request"


class PayloadTooLarge(DomainError):
    status_code = 413
    code = "PAYLOAD_TOO_LARGE"
    default_message = "Request body too large"


class TooManyRequests(DomainError):
    status_code = 429
    code = "TOO_MANY_REQUESTS"
    default_message = "Too many requests"


class TooManyLoginAttempts(TooManyRequests):
    code = "TOO_MANY_LOGIN_ATTEMPTS"
    default_message = "Too many login attempts; try again later"


class TooManySignUps(TooManyRequests):
    code = "TOO_MANY_SIGNUPS"
    default_message = "Too many sign-ups from this address; try again later"


class TooManyPending(TooManyRequests):
    code = "TOO_MANY_PENDING"
    default_message = "Too many booking requests still waiting for a decision; try again shortly"


class ServiceUnavailable(DomainError):
    status_code = 503
    code = "SERVICE_UNAVAILABLE"
    default_message = "A backing service is unavailable"


class QueueFull(ServiceUnavailable):
    """The event's line holds ``QUEUE_MAX_PER_EVENT`` requests: nothing was stored. ``excess``
    is how many must leave the line before one more fits (the API turns it into Retry-After)."""

    code = "QUEUE_FULL"
    default_message = "Too many requests are waiting for this event; try again later"

    def __init__(self, message: str | None = None, *, excess: int = 1, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.excess = excess


# The error a client gets for each reason a booking is rejected with (the deciders' reasons).
REJECTIONS: dict[str, type[DomainError]] = {
    "sold_out": SoldOut,
    "limit_exceeded": LimitExceeded,
    "event_past": EventPast,
    "capacity_lowered": CapacityLowered,
}


class PaymentsNotConfigured(ServiceUnavailable):
    code = "PAYMENTS_NOT_CONFIGURED"
    default_message = "Payment callbacks are not configured (PAYMENT_WEBHOOK_SECRET)"
