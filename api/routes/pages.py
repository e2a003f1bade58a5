"""The pages we serve ourselves, and their scripts, styles and the vendored chart library.

Every page runs only files from ``api/static`` (no inline script or style), so the policy is
``'self'`` and nothing else: a page keeps a token in the browser, and an injected ``<script>``
or ``style`` attribute does not run.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from common.errors import NotFound

router = APIRouter(include_in_schema=False)

STATIC = Path(__file__).resolve().parent.parent / "static"
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".txt": "text/plain"}

# No framing (clickjacking); scripts, styles and connections (fetch, ws:/wss:) to our own
# origin only; the pages post no forms, they call the API with fetch.
POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# Revalidated on each load (no fingerprinted names): a deploy is seen at the next reload.
ASSET_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

# Served by name from a list read at startup, never by a path from the request.
ASSETS = {
    path.relative_to(STATIC).as_posix(): path
    for path in STATIC.rglob("*")
    if path.suffix in MEDIA_TYPES or path.name.endswith(".LICENSE")
}


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC / name, media_type="text/html", headers=PAGE_HEADERS)


@router.get("/live")
def live_page() -> FileResponse:
    """Log in, watch seat counts change, book, join a waitlist, cancel."""
    return _page("live.html")


@router.get("/dashboard")
def dashboard_page() -> FileResponse:
    """The organiser's live view of their events' sales (docs/dashboard.md)."""
    return _page("dashboard.html")


@router.get("/static/{name:path}")
def asset(name: str) -> FileResponse:
    path = ASSETS.get(name)
    if path is None:
        raise NotFound("No such file")
    media_type = MEDIA_TYPES.get(path.suffix, "text/plain")
    return FileResponse(path, media_type=media_type, headers=ASSET_HEADERS)
