"""The lean path's body parser (``api.lean_path._booking``: the schema from JSON text) against the
full path's reading of the same body (FastAPI: ``json.loads``, then the schema from Python
objects). Whatever the lean path accepts must be what the full path accepts, with the same
values; anything it refuses goes on to the full path, which answers it. Pure: no service."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from api.lean_path import _booking
from common.bookings.schemas import BookingCreate

pytestmark = pytest.mark.fast

BOUNDS = BookingCreate.model_json_schema(by_alias=True)["properties"]
EDGES = [0, 1, 2, -1, 1000, 1001, 2**31 - 1, 2**31, 2**63, -(2**63) - 1]
SCALARS = (
    st.none()
    | st.booleans()
    | st.sampled_from(EDGES)
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=5)
    | st.sampled_from(["1", "2.0", "true", ""])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(), inner),
    max_leaves=3,
)
KEYS = st.sampled_from(["eventId", "quantity", "event_id", "EventId", "eventid", "extra"])
BODIES = st.one_of(
    st.dictionaries(KEYS, VALUES, max_size=3),
    st.fixed_dictionaries({"eventId": VALUES}, optional={"quantity": VALUES}),
    VALUES,
)


def full_path(body: bytes) -> BookingCreate | None:
    """The body as FastAPI reads it for a route taking ``BookingCreate``."""
    try:
        return BookingCreate.model_validate(json.loads(body))
    except (ValueError, ValidationError):  # json.JSONDecodeError is a ValueError
        return None


def assert_within_the_schema(booking: BookingCreate) -> None:
    for name, value in booking.model_dump(by_alias=True).items():
        assert BOUNDS[name]["minimum"] <= value <= BOUNDS[name]["maximum"], name


@given(BODIES, st.sampled_from(["", " ", "\n\t"]))
@example({"eventId": 1}, "")
@example({"eventId": 1, "quantity": 1000}, "")
@example({"eventId": True}, "")
@example({"eventId": 1.0}, "")
@example({"eventId": 1, "eventId ": 1}, "")
def test_a_json_body_is_read_alike_on_both_paths(document: Any, space: str):
    body = f"{space}{json.dumps(document)}{space}".encode()
    lean, full = _booking(body), full_path(body)
    assert lean == full, body
    if lean is not None:
        assert_within_the_schema(lean)


@given(st.binary(max_size=40) | BODIES.map(lambda d: json.dumps(d).encode("utf-16")))
@example(b'{"eventId": 1, "eventId": 2}')
@example(b'{"eventId": 1}garbage')
@example(b"\xef\xbb\xbf" + b'{"eventId": 1}')
def test_what_the_lean_path_accepts_the_full_path_accepts_alike(body: bytes):
    lean = _booking(body)
    if lean is not None:
        assert full_path(body) == lean, body
