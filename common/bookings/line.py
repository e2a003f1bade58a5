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

from common.bookings.models import IN_LINE


def queue_position(seq: int, through: int, gone: Sequence[int]) -> int:
    """The place in line of request number ``seq`` (1 = next), given the event's cursor."""
    return seq - through - bisect_left(gone, seq)


def position_of(status: str, seq: int, through: int, gone: Sequence[int]) -> int | None:
    """``queuePosition`` as the API shows it: a place for a request in line, else None."""
    if status not in IN_LINE:
        return None
    return queue_position(seq, through, gone)


def line_length(arrived: int, through: int, gone: Sequence[int]) -> int:
    """How many requests are in the line when ``arrived`` have been numbered."""
    return arrived - through - len(gone)
