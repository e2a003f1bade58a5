from __future__ import annotations

import asyncio
import math

import anyio
import redis.asyncio as aioredis
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text

from api.deps import AsyncRedisDep, EngineDep, SettingsDep
from api.envelope import error_body, ok
from api.hub import within

router = APIRouter(tags=["health"])

# The database check's own threads: a frozen database holds each check's thread until the
# engine's bounds end it, and those must not be the requests' threads, nor pile up.
_CHECK_THREADS = anyio.CapacityLimiter(2)


def _postgres_up(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


async def _postgres_answers(engine: Engine, timeout: float) -> bool:
    with anyio.move_on_after(timeout):
        return await anyio.to_thread.run_sync(
            _postgres_up, engine, limiter=_CHECK_THREADS, abandon_on_cancel=True
        )
    return False


async def _redis_answers(client: aioredis.Redis, timeout: float) -> bool:
    answered: list[bool] = []

    async def ping() -> None:
        answered.append(bool(await client.ping()))

    # ``within``: redis-py can swallow a cancellation mid-read (see api/hub.py).
    return await within(timeout, ping()) and answered == [True]


@router.get("/health")
@router.get("/", include_in_schema=False)
async def health(engine: EngineDep, aredis: AsyncRedisDep, settings: SettingsDep) -> JSONResponse:
    """200 when PostgreSQL and Redis answer within ``HEALTH_TIMEOUT``; 503 naming what is down,
    with ``Retry-After`` like every 503: no sooner than a check can take, so a prober's checks
    do not pile up on the two threads of a frozen database's check."""
    up = await asyncio.gather(
        _postgres_answers(engine, settings.HEALTH_TIMEOUT),
        _redis_answers(aredis, settings.HEALTH_TIMEOUT),
    )
    checks = dict(zip(("postgres", "redis"), up, strict=True))
    services = {name: "up" if up else "down" for name, up in checks.items()}
    if all(checks.values()):
        return JSONResponse(ok({"status": "ok", "services": services}))
    down = [name for name, up in checks.items() if not up]
    return JSONResponse(
        error_body(
            "SERVICE_UNAVAILABLE",
            f"Unavailable: {', '.join(down)}",
            [{"field": name, "message": "down"} for name in down],
        ),
        status_code=503,
        headers={"Retry-After": str(max(1, math.ceil(settings.HEALTH_TIMEOUT)))},
    )
