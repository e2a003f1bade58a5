"""Request dependencies: settings, a DB session that commits before the response, the user."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from common.db import session_scope
from common.errors import Unauthorized
from common.security import decode_access_token
from common.settings import Settings
from common.users import service as users_service
from common.users.models import User

bearer = HTTPBearer(auto_error=False, description="JWT from /api/auth/login")


def get_app_settings(request: Request) -> Settings:
    """The settings this app was built with (``create_app``), not the environment's."""
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_session(request: Request) -> Iterator[Session]:
    with session_scope(request.app.state.session_factory) as session:
        yield session


# scope="function": the commit happens before the response is sent, so a 2xx is durable.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


async def token_user_id(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> int:
    if credentials is None:
        raise Unauthorized()
    return decode_access_token(credentials.credentials, settings)


TokenUserId = Annotated[int, Depends(token_user_id)]


def current_user(session: SessionDep, user_id: TokenUserId) -> User:
    return users_service.get_active(session, user_id)


CurrentUser = Annotated[User, Depends(current_user)]
