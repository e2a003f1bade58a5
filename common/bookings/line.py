"""An event's line: its requests still waiting for a decision (``pending``) or for seats
(``waitlisted``), in arrival order.

Every request is numbered in its event's line when it is stored (``queue_seq``: 1, 2, 3, ...,
trigger ``assign_queue_seq``). The decider keeps a cursor on the event: ``line_through``, every
number up to it has left the line, and ``line_gone``, the numbers above it that left out of turn
(a request cancelled while queued, a rejection behind a waitlist), ascending. So a request's
place is its number less those ahead of it that have left: one subtraction and a count in a
short sorted list, never a query per booking, whatever the length of the line.

The waitlist is the front of the line: a request is waitlisted only once every request ahead of
it has been decided, and the waitlist moves only from its head (``docs/API.md``, "Waiting room").
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

from common.bookings.models import IN_LINE

# An event's cursor as a seat message's ``line`` carries it: (``through``, ``gone``).
Cursor = tuple[int, Sequence[int]]


def parse_cursor(line: Any) -> Cursor | None:
    """The cursor of a seat message's ``line`` object; None if it carries none."""
    if not isinstance(line, dict):
        return None
    through, gone = line.get("through"), line.get("gone")
    if not isinstance(through, int) or not isinstance(gone, list):
        return None
    return through, gone


def departed(cursor: Cursor) -> int:
    """How many requests have left the line: it only grows, so it orders an event's cursors
    (a message published out of order carries a smaller one)."""
    return cursor[0] + len(cursor[1])


def left_line(seq: int, cursor: Cursor) -> bool:
    """Whether request number ``seq`` has left the line."""
    through, gone = cursor
    if seq <= through:
        return True
    i = bisect_left(gone, seq)
    return i < len(gone) and gone[i] == seq


def queue_position(seq: int, through: int, gone: Sequence[int]) -> int:
    """The place in line of request number ``seq`` (1 = next), given the event's cursor."""
    return seq - through - bisect_left(gone, seq)


def position_of(status: str, seq: int, through: int, gone: Sequence[int]) -> int | None:
    """``queuePosition`` as the API shows it: a place for a request in line, else None."""
    if status not in IN_LINE:
        return None
    return queue_position(seq, through, gone)
