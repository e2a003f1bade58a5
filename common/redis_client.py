"""Redis clients, built by the process that owns them (API lifespan, worker child)."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from common.settings import Settings


def build_redis(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.REDIS_URL, decode_responses=True, health_check_interval=30, socket_timeout=5
    )


def build_async_redis(settings: Settings) -> aioredis.Redis:
    return aioredis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
