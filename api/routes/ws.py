"""Live updates: the WebSocket endpoints (docs/websockets.md) and the live page that uses them."""

from __future__ import annotations

import base64
import hashlib
import re
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


def _inline_hash(tag: str, html: str) -> str:
    match = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
    assert match is not None, f"live.html has no inline <{tag}>"
    return (
        "'sha256-"
        + base64.b64encode(hashlib.sha256(match.group(1).encode()).digest()).decode()
        + "'"
    )


def _live_page_headers() -> dict[str, str]:
    # The page keeps a token in the browser: it may not be framed (clickjacking), and runs only
    # its own inline script and style (by hash) and talks only to its own origin ('self'
    # covers ws:/wss: to the same host).
    html = LIVE_PAGE.read_text(encoding="utf-8")
    policy = "; ".join(
        [
            "default-src 'none'",
            f"script-src {_inline_hash('script', html)}",
            f"style-src {_inline_hash('style', html)}",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return {
        "Cache-Control": "no-cache",
        "Content-Security-Policy": policy,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


LIVE_PAGE_HEADERS = _live_page_headers()


@router.get("/live", include_in_schema=False)
def live_page() -> FileResponse:
    """Log in, watch seat counts change, book, and see each booking decided."""
    return FileResponse(LIVE_PAGE, media_type="text/html", headers=LIVE_PAGE_HEADERS)
