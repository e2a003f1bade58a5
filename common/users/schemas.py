from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import EmailStr, Field, field_validator

from common.schemas import ReadSchema, WriteSchema, trimmed

# RFC 5321 caps an address at 254 octets and email-validator refuses longer ones, so that is
# the limit the schema must state (schemathesis found 255 accepted by the schema, refused here).
MAX_EMAIL_LENGTH = 254
# bcrypt reads at most 72 bytes; a longer password would be silently truncated, so refuse it.
MAX_PASSWORD_BYTES = 72

PersonName = Annotated[str, Field(min_length=2, max_length=255), trimmed(2)]


def _check_password_bytes(value: str) -> str:
    if len(value.encode()) > MAX_PASSWORD_BYTES:
        raise ValueError(f"must be at most {MAX_PASSWORD_BYTES} bytes in UTF-8")
    return value


class UserCreate(WriteSchema):
    email: EmailStr = Field(max_length=MAX_EMAIL_LENGTH)
    name: PersonName
    password: str = Field(min_length=8)

    _password_bytes = field_validator("password")(_check_password_bytes)


class UserLogin(WriteSchema):
    email: EmailStr = Field(max_length=MAX_EMAIL_LENGTH)
    password: str = Field(min_length=1)

    _password_bytes = field_validator("password")(_check_password_bytes)


class UserRead(ReadSchema):
    id: int
    email: str
    name: str
    role: Literal["user", "admin"]
    created_at: datetime


class AuthRead(ReadSchema):
    user: UserRead
    token: str
