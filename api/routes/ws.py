"""Live updates: the WebSocket endpoints (docs/websockets.md); the pages using them are in
``api/routes/pages.py``."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from api.deps import RealtimeDep
from api.realtime.serve import serve

router = APIRouter(tags=["live"])


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
