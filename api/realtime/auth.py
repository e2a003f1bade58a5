"""Who may open a socket: the browser's Origin, then a valid token of an active user."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlsplit

import anyio
from fastapi import WebSocket
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.middleware import request_host
from api.realtime.commands import BadMessage, decode, field
from common.db import session_scope
from common.errors import InvalidToken
from common.security import read_access_token
from common.settings import Settings
from common.users import service as users_service

AUTH_TIMEOUT = 5.0  # seconds to send {"type": "auth"} when the URL carries no token


def origin_allowed(settings: Settings, websocket: WebSocket) -> bool:
    origin = websocket.headers.get("origin")
    if origin is None:  # not a browser; browsers always send it
        return True
    allowed = settings.CORS_ORIGINS
    if "*" in allowed or origin in allowed:
        return True
    # The API's own page (/live) is same-origin wherever the API is served: the one Host the
    # allow-list checked (two Hosts name no origin).
    host = request_host(websocket.scope)
    return host is not None and urlsplit(origin).netloc == host


async def authenticate(
    websocket: WebSocket,
    token: str | None,
    settings: Settings,
    session_factory: sessionmaker[Session],
) -> tuple[int, datetime] | str:
    """The user id and the token's expiry, or the reason to close with 1008."""
    if token is None:
        with anyio.move_on_after(AUTH_TIMEOUT):
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return "disconnected"
            try:
                first = decode(message.get("text"))
            except BadMessage:
                return "authentication required"
            candidate = field(first, "token")
            if first.get("type") != "auth" or not isinstance(candidate, str):
                return "authentication required"
            token = candidate
        if token is None:
            return "authentication timeout"
    try:
        user_id, expires_at = read_access_token(token, settings)
    except InvalidToken:
        return "invalid or expired token"

    def active() -> bool:
        with session_scope(session_factory) as session:
            try:
                users_service.get_active(session, user_id)
            except InvalidToken:
                return False
        return True

    if not await run_in_threadpool(active):
        return "invalid or expired token"
    return user_id, expires_at
