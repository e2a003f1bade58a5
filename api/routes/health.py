from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from api.envelope import error_body, ok

router = APIRouter(tags=["health"])


def _postgres_up(request: Request) -> bool:
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


async def _redis_up(request: Request) -> bool:
    try:
        return bool(await request.app.state.aredis.ping())
    except Exception:
        return False


@router.get("/health")
@router.get("/", include_in_schema=False)
async def health(request: Request) -> JSONResponse:
    """200 when PostgreSQL and Redis answer; 503 naming what is down."""
    checks = {
        "postgres": await run_in_threadpool(_postgres_up, request),
        "redis": await _redis_up(request),
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
