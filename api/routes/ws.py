"""Live updates: the WebSocket endpoints (docs/websockets.md) and the live page that uses them."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, WebSocket
from fastapi.responses import FileResponse

from api.deps import RealtimeDep
from api.realtime.serve import serve

router = APIRouter(tags=["live"])

LIVE_PAGE = Path(__file__).resolve().parent.parent / "static" / "live.html"


@router.websocket("/ws")
async def live(websocket: WebSocket, manager: RealtimeDep, token: str | None = None) -> None:
    """Authenticate with ``?token=JWT`` or a first ``{"type": "auth", "token": ...}``."""
    await serve(manager, websocket, token=token, event_id=None)


@router.websocket("/ws/events/{event_id}")
async def live_event(
    websocket: WebSocket, event_id: int, manager: RealtimeDep, token: str | None = None
) -> None:
    """As ``/ws``, subscribed to one event from the start."""
    await serve(manager, websocket, token=token, event_id=event_id)


@router.get("/live", include_in_schema=False)
def live_page() -> FileResponse:
    """Log in, watch seat counts change, book, and see each booking decided."""
    return FileResponse(LIVE_PAGE, media_type="text/html", headers={"Cache-Control": "no-cache"})
