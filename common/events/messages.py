"""What the events domain publishes: admin changes, to the event's channel, after commit."""

from __future__ import annotations

import redis

from common.channels import event_channel
from common.events.models import Event
from common.events.schemas import EventRead
from common.pubsub import now_iso, publish


def publish_event_updated(client: redis.Redis, event: Event) -> None:
    data = EventRead.model_validate(event).model_dump(mode="json", by_alias=True)
    data["eventId"] = event.id
    data["timestamp"] = now_iso()
    publish(client, event_channel(event.id), "event_updated", data)


def publish_event_deleted(client: redis.Redis, event_id: int) -> None:
    publish(
        client,
        event_channel(event_id),
        "event_deleted",
        {"eventId": event_id, "timestamp": now_iso()},
    )
