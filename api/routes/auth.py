from __future__ import annotations

from fastapi import APIRouter, Request, status

from api.deps import CurrentUser, SessionDep, SettingsDep
from api.envelope import Envelope, error_responses, ok
from common import ratelimit
from common.errors import TooManyLoginAttempts
from common.ratelimit import Limit
from common.security import create_access_token
from common.users import service
from common.users.schemas import AuthRead, UserCreate, UserLogin, UserRead

router = APIRouter(prefix="/api/auth", tags=["auth"])


def _auth_payload(user, settings) -> dict:  # type: ignore[no-untyped-def]
    token = create_access_token(user.id, user.role, settings)
    return AuthRead(user=UserRead.model_validate(user), token=token).model_dump(by_alias=True)


# Plain ``def`` routes: bcrypt and psycopg2 block, so FastAPI runs them in its threadpool.
@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    response_model=Envelope[AuthRead],
    responses=error_responses(400, 409, 413),
)
def register(body: UserCreate, session: SessionDep, settings: SettingsDep) -> dict:
    """Create an account with the role `user`; admins come from `ebs users create-admin`."""
    user = service.register(session, body, bcrypt_rounds=settings.BCRYPT_ROUNDS)
    return ok(_auth_payload(user, settings))


@router.post(
    "/login", response_model=Envelope[AuthRead], responses=error_responses(400, 401, 413, 429)
)
def login(body: UserLogin, request: Request, session: SessionDep, settings: SettingsDep) -> dict:
    """Throttled per account and per client address before any password is checked:
    429 ``TOO_MANY_LOGIN_ATTEMPTS`` with ``Retry-After`` once a window's attempts are used."""
    address = request.client.host if request.client else "unknown"
    window = settings.LOGIN_WINDOW
    ratelimit.hit(
        request.app.state.redis,
        [
            Limit("login:account", body.email.lower(), settings.LOGIN_ATTEMPTS_PER_ACCOUNT, window),
            Limit("login:address", address, settings.LOGIN_ATTEMPTS_PER_ADDRESS, window),
        ],
        TooManyLoginAttempts,
    )
    user = service.authenticate(
        session, body.email, body.password, bcrypt_rounds=settings.BCRYPT_ROUNDS
    )
    return ok(_auth_payload(user, settings))


@router.get("/me", response_model=Envelope[UserRead], responses=error_responses(401))
def me(user: CurrentUser) -> dict:
    return ok(UserRead.model_validate(user))
