"""Pydantic bases every domain schema builds on: camelCase JSON, unknown input fields refused."""

from __future__ import annotations

from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ReadSchema(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, from_attributes=True)


class WriteSchema(BaseModel):
    """Request bodies: a field we do not know is an error, never silently assigned."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=False, extra="forbid")


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
