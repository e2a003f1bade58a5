"""One place that turns every failure into the error envelope (docs/ERROR-CODES.md).

Domain errors carry their status and code; validation errors become 400 VALIDATION_ERROR with
one details entry per field; a backing service that is down is 503; anything else is a 500
that is logged, never shown.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.envelope import error_body
from common.errors import DomainError

logger = logging.getLogger(__name__)

HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    406: "NOT_ACCEPTABLE",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "TOO_MANY_REQUESTS",
}


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def validation_details(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    details: dict[str, dict[str, Any]] = {}
    for err in errors:
        field = _field(tuple(err.get("loc", ())))
        if err.get("type") == "extra_forbidden":
            message = "unknown field"
        elif err.get("type") == "json_invalid":
            message = "malformed JSON"
        else:
            message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        details.setdefault(field, {"field": field, "message": message})
    return list(details.values())


async def domain_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    return JSONResponse(
        error_body(exc.code, exc.message, exc.details),
        status_code=exc.status_code,
        headers=exc.headers,
    )


def _body_not_json(errors: list[dict[str, Any]]) -> bool:
    # FastAPI reads a body as JSON only under a JSON media type; under any other (or none) the
    # model is handed the raw bytes: the body's media type is what is wrong, not its fields.
    return any(
        tuple(err.get("loc", ())) == ("body",) and isinstance(err.get("input"), bytes)
        for err in errors
    )


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if _body_not_json(errors):
        return JSONResponse(
            error_body("UNSUPPORTED_MEDIA_TYPE", "Send the body as application/json"),
            status_code=415,
        )
    details = validation_details(errors)
    return JSONResponse(
        error_body("VALIDATION_ERROR", "Request validation failed", details), status_code=400
    )


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_CODES.get(exc.status_code, "HTTP_ERROR")
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


async def unavailable_handler(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("backing service unavailable: %s", exc)
    return JSONResponse(
        error_body("SERVICE_UNAVAILABLE", "A backing service is unavailable, try again"),
        status_code=503,
        headers={"Retry-After": "1"},
    )


def _is_nul_in_text(exc: BaseException) -> bool:
    # PostgreSQL text cannot hold U+0000 and psycopg2 refuses it before sending: whatever input
    # carried it (query, path, JSON body), that is bad input, not a server error.
    while exc is not None:
        if isinstance(exc, ValueError) and "NUL (0x00)" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


async def value_error_handler(request: Request, exc: Exception) -> JSONResponse:
    if _is_nul_in_text(exc):
        details = [{"field": "body", "message": "text must not contain NUL (U+0000)"}]
        return JSONResponse(
            error_body("VALIDATION_ERROR", "Request validation failed", details), status_code=400
        )
    return await unhandled_error_handler(request, exc)


async def unhandled_error_handler(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return await unavailable_handler(request, exc)
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body("INTERNAL_ERROR", "Internal server error"), status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, domain_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    # OperationalError covers a lost connection, a statement or lock wait cut short by
    # DB_STATEMENT_TIMEOUT / DB_LOCK_TIMEOUT and a server silent past DB_REPLY_TIMEOUT;
    # PoolTimeout, no connection free in DB_POOL_TIMEOUT.
    app.add_exception_handler(OperationalError, unavailable_handler)
    app.add_exception_handler(PoolTimeout, unavailable_handler)
    app.add_exception_handler(redis.ConnectionError, unavailable_handler)
    app.add_exception_handler(redis.TimeoutError, unavailable_handler)
    app.add_exception_handler(ValueError, value_error_handler)
    app.add_exception_handler(Exception, unhandled_error_handler)
