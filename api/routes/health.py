from __future__ import annotations

import redis.asyncio as aioredis
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text
from starlette.concurrency import run_in_threadpool

from api.deps import AsyncRedisDep, EngineDep
from api.envelope import error_body, ok

router = APIRouter(tags=["health"])


def _postgres_up(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


async def _redis_up(client: aioredis.Redis) -> bool:
    try:
        return bool(await client.ping())
    except Exception:
        return False


@router.get("/health")
@router.get("/", include_in_schema=False)
async def health(engine: EngineDep, aredis: AsyncRedisDep) -> JSONResponse:
    """200 when PostgreSQL and Redis answer; 503 naming what is down."""
    checks = {
        "postgres": await run_in_threadpool(_postgres_up, engine),
        "redis": await _redis_up(aredis),
    }
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
    )
