from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AnyHttpUrl, Field, field_validator

from common.schemas import DateTimeText, Page, ReadSchema, WriteSchema
from common.webhooks.messages import EVENT_TYPES

MessageState = Literal["pending", "delivered", "failed"]


def _known_types(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    unknown = sorted(set(value) - set(EVENT_TYPES))
    if unknown:
        raise ValueError(f"unknown event types {unknown}; known: {list(EVENT_TYPES)}")
    return sorted(set(value))


class WebhookCreate(WriteSchema):
    url: AnyHttpUrl = Field(description="http:// or https://, to a public address")
    description: str | None = Field(default=None, max_length=255)
    event_types: list[str] | None = Field(
        default=None, min_length=1, description="types to send; omitted or null: all of them"
    )
    event_id: int | None = Field(
        default=None, ge=1, le=2**31 - 1, description="only this event's bookings"
    )
    enabled: bool = True

    _types = field_validator("event_types")(_known_types)


class WebhookUpdate(WriteSchema):
    url: AnyHttpUrl | None = None
    description: str | None = Field(default=None, max_length=255)
    event_types: list[str] | None = Field(default=None, min_length=1)
    event_id: int | None = Field(default=None, ge=1, le=2**31 - 1)
    enabled: bool | None = None

    _types = field_validator("event_types")(_known_types)


class WebhookRead(ReadSchema):
    id: int
    owner_id: int
    url: str
    description: str | None
    event_types: list[str] | None = Field(description="null: every type")
    event_id: int | None
    enabled: bool
    disabled_reason: str | None = Field(description="why the deliverer disabled it, if it did")
    disabled_at: datetime | None
    failure_count: int = Field(description="consecutive failed attempts")
    retry_at: datetime | None = Field(description="while failing: when the next attempt goes")
    previous_secret_until: datetime | None
    created_at: datetime
    updated_at: datetime


class WebhookSecret(WebhookRead):
    """The endpoint with its signing secret: shown once, on creation and on rotation."""

    secret: str


class WebhookPage(Page):
    webhooks: list[WebhookRead]


class SecretRotate(WriteSchema):
    grace_seconds: int | None = Field(
        default=None, ge=0, le=7 * 86_400, description="the old secret signs this long too"
    )


class AttemptRead(ReadSchema):
    attempted_at: datetime
    status_code: int | None
    error: str | None
    latency_ms: int
    response_head: str | None = Field(description="the first 256 bytes of the reply")


class DeliveryRead(ReadSchema):
    id: int
    message_id: str = Field(description="the webhook-id header")
    event_type: str
    state: MessageState
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    delivered_at: datetime | None
    last_status: int | None
    last_error: str | None
    booking_id: str | None
    attempt_log: list[AttemptRead]


class DeliveryPage(Page):
    deliveries: list[DeliveryRead]


class Redeliver(WriteSchema):
    since: DateTimeText = Field(description="every message of the endpoint written since then")


class Redelivered(ReadSchema):
    redelivered: int
