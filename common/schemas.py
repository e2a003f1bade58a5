"""Pydantic bases every domain schema builds on: camelCase JSON, unknown input fields refused,
request bodies read strictly."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel


class ReadSchema(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, from_attributes=True)


class WriteSchema(BaseModel):
    """Request bodies: a field we do not know is an error, never silently assigned; a value of
    the wrong JSON type is an error, never converted (``true`` is not event 1, ``"2"`` and
    ``2.0`` are not a quantity, ``"yes"`` is not a boolean). FastAPI validates a body after
    ``json.loads`` and the lean path with ``model_validate_json``: strict mode refuses the same
    values either way (tests/test_lean_path.py)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=False, extra="forbid", strict=True
    )


def _text(value: Any) -> Any:
    if isinstance(value, str | datetime):
        return value
    raise ValueError("must be an RFC 3339 date-time string")


# A date-time arrives in JSON as text; strict mode from Python objects (FastAPI's way) would
# take only a datetime, so this one field is read from its text, and from text only.
DateTimeText = Annotated[AwareDatetime, Field(strict=False), BeforeValidator(_text)]


def trimmed(min_length: int = 0) -> AfterValidator:
    """Keep a string without its surrounding spaces, and check the minimum again once trimmed.

    Goes after a Field's limits, which then hold for what was sent, exactly as the OpenAPI schema
    states them: Pydantic's str_strip_whitespace trims first, so a 256-character name with a
    leading tab passed a 255 limit (schemathesis found it). Passwords are kept exactly as typed.
    """

    def trim(value: str) -> str:
        value = value.strip()
        if len(value) < min_length:
            raise ValueError(f"must have at least {min_length} characters besides spaces")
        return value

    return AfterValidator(trim)


class Page(ReadSchema):
    total: int
    has_more: bool
