"""An event's line as a cursor (``common.bookings.line``) against the line itself: the numbers
1..n handed out, any of them gone, in or out of turn. Whatever left, every place the cursor
gives is the request's place among those still waiting. Pure: no service."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.bookings.line import departed, left_line, parse_cursor, position_of, queue_position
from common.bookings.models import IN_LINE

pytestmark = pytest.mark.fast


@st.composite
def lines(draw: st.DrawFn) -> tuple[int, set[int]]:
    """How many requests were numbered, and the numbers that have left the line."""
    arrived = draw(st.integers(0, 60))
    left = draw(st.sets(st.integers(1, arrived), max_size=arrived)) if arrived else set()
    return arrived, left


def cursor_of(left: set[int]) -> tuple[int, list[int]]:
    """The decider's cursor for these departures: every number up to ``through`` has left, and
    ``gone`` lists, ascending, the ones above it that left out of turn."""
    through = 0
    while through + 1 in left:
        through += 1
    return through, sorted(n for n in left if n > through)


@given(lines())
def test_every_place_is_the_place_among_those_still_waiting(line):
    arrived, left = line
    through, gone = cursor_of(left)
    waiting = [n for n in range(1, arrived + 1) if n not in left]
    assert departed((through, gone)) == len(left)
    for seq in range(1, arrived + 1):
        assert left_line(seq, (through, gone)) == (seq in left)
    for place, seq in enumerate(waiting, start=1):
        assert queue_position(seq, through, gone) == place
        for status in ("pending", "waitlisted", "held", "confirmed", "rejected", "cancelled"):
            expected = place if status in IN_LINE else None
            assert position_of(status, seq, through, gone) == expected


@given(lines(), lines())
def test_a_later_cursor_has_more_departures(first, more):
    """Departures only add up, so ``departed`` orders the cursors of one event."""
    arrived, left = first
    later = left | {n for n in more[1] if n <= arrived}
    assert departed(cursor_of(later)) >= departed(cursor_of(left))
    assert (departed(cursor_of(later)) == departed(cursor_of(left))) == (later == left)


@pytest.mark.parametrize(
    "line",
    [None, [], "3", {"through": 3}, {"gone": []}, {"through": "3", "gone": []},
     {"through": 3, "gone": {}}],
)  # fmt: skip
def test_a_line_without_a_cursor_is_none(line):
    assert parse_cursor(line) is None


def test_a_seat_messages_line_is_its_cursor():
    assert parse_cursor({"through": 3, "gone": [5, 8]}) == (3, [5, 8])
