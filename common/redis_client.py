"""Redis clients, built by the process that owns them (API lifespan, worker child)."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from common.settings import Settings


def build_redis(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.REDIS_URL, decode_responses=True, health_check_interval=30, socket_timeout=5
    )


def build_async_redis(settings: Settings) -> aioredis.Redis:
    return aioredis.Redis.from_url(settings.REDIS_URL, decode_responses=True)


def build_signal_redis(settings: Settings) -> redis.Redis:
    """The API's client for booking signals: ``SIGNAL_TIMEOUT`` and no retry. The booking is
    committed before its signal is sent, so a Redis that does not answer costs the request that
    bound, never its 202; the lost signal is resent by the sweeper (``SWEEP_PENDING_AFTER``)."""
    return redis.Redis.from_url(
        settings.REDIS_URL,
        decode_responses=True,
        socket_timeout=settings.SIGNAL_TIMEOUT,
        socket_connect_timeout=settings.SIGNAL_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )
