"""Who may open a socket: the browser's Origin, then a valid token of an active user.

Opening a socket is cheap so that thousands can come back at once (docs/websockets.md,
"Reconnecting"): the token is judged by the shared token cache (``common.tokens``, the policy
HTTP requests follow) and the user by ``api.realtime.active``.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import NamedTuple
from urllib.parse import urlsplit

import anyio
from fastapi import WebSocket
from sqlalchemy.orm import Session, sessionmaker

from api.middleware import request_host
from api.realtime.active import ActiveUsers
from api.realtime.commands import BadMessage, decode, field
from common.errors import InvalidToken
from common.settings import Settings
from common.tokens import token_cache

AUTH_TIMEOUT = 5.0  # seconds to send {"type": "auth"} when the URL carries no token


class Admitted(NamedTuple):
    user_id: int
    expires_at: datetime
    waits: bool | None  # requests in a line; None when the user was not looked up (recent)


def _expiry(token: str) -> datetime:
    # Only for a token the cache has just verified: its exp is there and numeric.
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return datetime.fromtimestamp(claims["exp"], UTC)


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
    users: ActiveUsers,
) -> Admitted | str:
    """Who signed in, or the reason to close with 1008."""
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
        user_id = token_cache(settings).user_id(token)
    except InvalidToken:
        return "invalid or expired token"
    active, waits = await users.check(user_id, session_factory)
    if not active:
        return "invalid or expired token"
    return Admitted(user_id, _expiry(token), waits)
