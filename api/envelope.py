"""The response envelope: `{"success": true, "data": ...}` or `{"success": false, "error": ...}`."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


class Envelope(BaseModel, Generic[T]):
    success: Literal[True] = True
    data: T


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] = []


class ErrorEnvelope(BaseModel):
    success: Literal[False] = False
    error: ErrorBody


def ok(data: Any) -> dict[str, Any]:
    return {"success": True, "data": data}


def error_body(code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict:
    return {"success": False, "error": {"code": code, "message": message, "details": details or []}}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer with."""
    return {status: {"model": ErrorEnvelope} for status in statuses}
