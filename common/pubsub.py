"""Messages on Redis pub/sub: one JSON shape, ``{"type": ..., "data": {...}}``, for every channel.

The API relays them to WebSocket clients as they are (docs/websockets.md).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import redis


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


# Built once: json.dumps with options makes a new encoder per call, and the worker encodes
# one message per decision.
_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))


def encode(message_type: str, data: dict[str, Any]) -> str:
    return _ENCODER.encode({"type": message_type, "data": data})


def publish(client: redis.Redis, channel: str, message_type: str, data: dict[str, Any]) -> None:
    client.publish(channel, encode(message_type, data))
