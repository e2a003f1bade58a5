"""The races of following places in line that an end-to-end run hits only by chance: a booking
read or accepted just after its decision was published, a cursor delivered out of order, an
update still queued when the decision arrives. ``api.realtime.positions`` on its own, on a real
event loop; tests/test_ws.py runs it against the real API and worker."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from api.realtime.positions import Positions
from common.bookings.reads import WaitingBooking

INTERVAL = 0.2


def line(through: int, gone: list[int] | None = None) -> dict[str, Any]:
    return {"type": "line_update", "data": {"line": {"through": through, "gone": gone or []}}}


def test_places_are_coalesced_never_go_back_and_stop_at_the_decision() -> None:
    async def scenario() -> None:
        sent: list[tuple[int, dict[str, Any]]] = []
        positions = Positions(
            lambda user, text: sent.append((user, json.loads(text)["data"])), INTERVAL
        )

        def places(user: int = 1) -> list[int]:
            return [data["queuePosition"] for who, data in sent if who == user]

        positions.signed_in(1)
        positions.signed_in(2)
        positions.on_event(7, line(30))  # nobody here waits on event 7 yet: nothing kept
        assert positions.cursors == {}
        # b9 was decided while the sign-in read ran: its booking_status went by, not followed.
        positions.on_status(1, {"bookingId": "b9", "eventId": 8, "status": "rejected"})
        rows = [
            WaitingBooking("b1", 1, 7, 10, "waitlisted", 3, [5]),  # behind 3 gone and 5
            WaitingBooking("b9", 1, 8, 12, "pending", 4, []),
        ]
        positions.loaded(rows, [1], complete=False)
        assert places() == [6]  # the first place at once
        assert set(positions.by_user[1]) == {"b1"} and set(positions.cursors) == {7}

        for through in range(4, 9):  # five batches within the interval
            positions.on_event(7, line(through))
        assert places() == [6]
        positions.on_event(7, line(2))  # an older cursor, delivered late: ignored
        await asyncio.sleep(INTERVAL * 2)
        assert places() == [6, 2]  # the latest only
        # A full interval after that send (its timer may have fired late on a busy machine).
        await asyncio.sleep(INTERVAL * 1.5)

        positions.on_event(7, line(8, [9]))  # moves again: due at once, the interval is over
        assert places() == [6, 2, 1]
        positions.on_event(7, line(8, [9, 11]))  # someone behind leaves: same place, no message
        positions.on_accepted(
            2, {"bookingId": "b2", "eventId": 7, "queueSeq": 12, "status": "pending"}
        )
        positions.on_event(7, line(9, [11]))  # b1 first again...
        positions.on_event(7, line(10, [11]))  # ...and out of the line: dropped, update and all
        positions.on_status(1, {"bookingId": "b1", "status": "confirmed"})
        await asyncio.sleep(INTERVAL * 2)
        assert places() == [6, 2, 1]
        assert positions.by_user[1] == {} and set(positions.by_event[7]) == {"b2"}
        assert places(2) == [2, 1]  # b2 (number 12) moved up meanwhile

        # Accepted here after its decision went by: not followed, by the cursor or by the id.
        accepted = {"eventId": 7, "queueSeq": 10, "status": "pending"}
        positions.on_accepted(1, {"bookingId": "b3", **accepted})
        positions.on_status(1, {"bookingId": "b4", "eventId": 5, "status": "confirmed"})
        positions.on_accepted(1, {"bookingId": "b4", **accepted, "eventId": 5})
        assert positions.by_user[1] == {}
        positions.signed_out(2)
        assert positions.by_event == {} and positions.cursors == {} and 2 not in positions.by_user

    asyncio.run(scenario())
