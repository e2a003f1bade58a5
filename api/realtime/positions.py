"""Places in line: each signed-in user's pending and waitlisted bookings, and the
``queue_position`` messages that tell the user's sockets when a place changes.

An instance knows, per connected user, the bookings still in line (booking, event, number in
line, status): read once when a socket signs in (one query, which also gives the events'
cursors), added when this instance's intake accepts one (``Hub.accepted``) or a
``booking_status`` says ``waitlisted``, dropped on a decision or when the user's last socket
goes. Every message on an event's channel carries the event's cursor (``line``); a place is
then ``common.bookings.line.queue_position``: a dict lookup and a bisect per booking of a
connected user, never a query.

Places are coalesced per booking: the first goes at once, later ones at most every
``INTERVAL`` seconds, the latest value winning. The final ``booking_status`` ends a booking's
updates: nothing is sent for it after that.

An event's messages cost nothing here unless a booking of a signed-in user waits in it: then
its newest cursor is kept, ordered by how many numbers have left the line (``through +
len(gone)``, which only grows), so a stale one (a message published out of order, a read that
raced a message) never moves a place back. A booking whose decision went by while it was read
or accepted is recognised by its id and not followed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from common.bookings import reads as bookings_reads
from common.bookings.line import Cursor, departed, left_line, parse_cursor, queue_position
from common.bookings.models import IN_LINE
from common.db import session_scope
from common.pubsub import encode, now_iso


# What ``load`` and ``reload`` use of api.realtime.connections' Client and ConnectionManager,
# named here so that module imports this one and not the other way round.
class Client(Protocol):
    user_id: int
    waits: bool | None


class ConnectionManager(Protocol):
    session_factory: sessionmaker[Session]
    positions: Positions

    def offer(self, client: Any, item: str) -> bool: ...


logger = logging.getLogger(__name__)

INTERVAL = 1.0  # seconds between two queue_position messages of one booking
SETTLED_KEPT = 256  # decided bookings remembered per signed-in user


@dataclass(slots=True, eq=False)
class Waiting:
    booking_id: str
    user_id: int
    event_id: int
    seq: int
    status: str
    position: int | None = None  # the latest place known
    sent: int | None = None  # the place last sent
    sent_at: float = float("-inf")
    timer: asyncio.TimerHandle | None = None

    def message(self) -> str:
        return encode(
            "queue_position",
            {
                "bookingId": self.booking_id,
                "eventId": self.event_id,
                "status": self.status,
                "queuePosition": self.position,
                "timestamp": now_iso(),
            },
        )


class Positions:
    """The waiting bookings of this instance's signed-in users; ``send(user_id, text)`` queues a
    message for each of the user's sockets. Runs on the event loop only."""

    def __init__(self, send: Callable[[int, str], None], interval: float = INTERVAL) -> None:
        self._send = send
        self.interval = interval
        self.by_event: dict[int, dict[str, Waiting]] = {}
        self.by_user: dict[int, dict[str, Waiting]] = {}
        # The newest cursor of each event in ``by_event``, kept only while it has bookings here.
        self.cursors: dict[int, Cursor] = {}
        # Per signed-in user, the bookings whose decision this instance relayed (the latest
        # ``SETTLED_KEPT``): one read or accepted just after its decision went by is not
        # followed again.
        self.settled: dict[int, dict[str, None]] = {}
        # Signed-in users whose waiting bookings were read (or known to be none): another
        # socket of theirs gets its places from here, without a query.
        self.read: set[int] = set()

    # ------------------------------------------------------------------ what arrives

    def on_event(self, event_id: int, message: dict[str, Any]) -> None:
        """A message on an event's channel."""
        tracked = self.by_event.get(event_id)
        if not tracked:
            return
        if message.get("type") == "event_deleted":
            for waiting in list(tracked.values()):
                self._drop(waiting)
            return
        cursor = parse_cursor((message.get("data") or {}).get("line"))
        if cursor is None or not self._newer(event_id, cursor):
            return
        for waiting in list(tracked.values()):
            self._place(waiting, cursor)

    def on_status(self, user_id: int, data: dict[str, Any]) -> None:
        """A ``booking_status`` for a user with a socket here."""
        booking_id, status = data.get("bookingId"), data.get("status")
        mine = self.by_user.get(user_id)
        if mine is None or not isinstance(booking_id, str) or not isinstance(status, str):
            return
        waiting = mine.get(booking_id)
        if status not in IN_LINE:
            settled = self.settled.setdefault(user_id, {})
            settled[booking_id] = None
            if len(settled) > SETTLED_KEPT:
                del settled[next(iter(settled))]
            if waiting is not None:  # decided: its booking_status is its last word
                self._drop(waiting)
            return
        seq, event_id = data.get("queueSeq"), data.get("eventId")
        if not isinstance(seq, int) or not isinstance(event_id, int):
            return
        if waiting is None:
            if booking_id in self.settled.get(user_id, ()):
                return
            waiting = self._track(booking_id, user_id, event_id, seq, status)
        waiting.status = status
        # The status carries the place: it counts as sent, and a queued update of it is moot.
        position = data.get("queuePosition")
        if isinstance(position, int):
            self._cancel(waiting)
            waiting.position = waiting.sent = position
            waiting.sent_at = asyncio.get_running_loop().time()
        cursor = self.cursors.get(event_id)
        if cursor is not None:
            self._place(waiting, cursor)

    def on_accepted(self, user_id: int, data: dict[str, Any]) -> None:
        """A booking this instance's intake stored (``Hub.accepted``)."""
        mine = self.by_user.get(user_id)
        booking_id = data["bookingId"]
        if mine is None or booking_id in mine or booking_id in self.settled.get(user_id, ()):
            return
        waiting = self._track(
            booking_id, user_id, data["eventId"], data["queueSeq"], data["status"]
        )
        cursor = self.cursors.get(waiting.event_id)
        if cursor is not None:  # else its place comes with the event's next message
            self._place(waiting, cursor)

    # ------------------------------------------------------------------ who is here

    def signed_in(self, user_id: int) -> None:
        """The user has a socket here (before their bookings are read)."""
        self.by_user.setdefault(user_id, {})

    def signed_out(self, user_id: int) -> None:
        """The user's last socket here is gone."""
        for waiting in list(self.by_user.get(user_id, {}).values()):
            self._drop(waiting)
        self.by_user.pop(user_id, None)
        self.settled.pop(user_id, None)
        self.read.discard(user_id)

    def places(self, user_id: int) -> list[str]:
        """The known places of the user's waiting bookings, for a socket that just opened."""
        mine = self.by_user.get(user_id, {})
        return [w.message() for w in mine.values() if w.position is not None]

    def loaded(
        self,
        rows: Iterable[bookings_reads.WaitingBooking],
        users: Collection[int],
        *,
        complete: bool,
    ) -> dict[int, list[str]]:
        """Merge what the database says of ``users``' waiting bookings; returns, per user, the
        places of bookings already tracked (for a new socket that has not heard them).

        ``complete`` (a resync): what is tracked for these users but no longer in the
        database has been decided meanwhile and is dropped.
        """
        seen: set[str] = set()
        known: dict[int, list[str]] = {}
        for row in rows:
            mine = self.by_user.get(row.user_id)
            if mine is None or row.booking_id in self.settled.get(row.user_id, ()):
                continue  # signed out, or decided, while it was read
            seen.add(row.booking_id)
            waiting = mine.get(row.booking_id)
            if waiting is None:
                waiting = self._track(
                    row.booking_id, row.user_id, row.event_id, row.queue_seq, row.status
                )
            else:
                if complete:
                    waiting.status = row.status
                if waiting.position is not None:
                    known.setdefault(row.user_id, []).append(waiting.message())
            # A message heard while the row was read may be newer than the row.
            self._newer(row.event_id, (row.line_through, row.line_gone))
            self._place(waiting, self.cursors[row.event_id])
        self.read.update(u for u in users if u in self.by_user)
        if complete:
            for user_id in users:
                for waiting in list(self.by_user.get(user_id, {}).values()):
                    if waiting.booking_id not in seen:
                        self._drop(waiting)
        return known

    # ------------------------------------------------------------------ the bookkeeping

    def _newer(self, event_id: int, cursor: Cursor) -> bool:
        current = self.cursors.get(event_id)
        if current is not None and departed(current) > departed(cursor):
            return False
        self.cursors[event_id] = cursor
        return True

    def _track(
        self, booking_id: str, user_id: int, event_id: int, seq: int, status: str
    ) -> Waiting:
        waiting = Waiting(booking_id, user_id, event_id, seq, status)
        self.by_user.setdefault(user_id, {})[booking_id] = waiting
        self.by_event.setdefault(event_id, {})[booking_id] = waiting
        return waiting

    def _drop(self, waiting: Waiting) -> None:
        self._cancel(waiting)
        mine = self.by_user.get(waiting.user_id)
        if mine is not None:
            mine.pop(waiting.booking_id, None)
        tracked = self.by_event.get(waiting.event_id)
        if tracked is not None:
            tracked.pop(waiting.booking_id, None)
            if not tracked:  # nobody here waits on the event: forget it, cursor and all
                del self.by_event[waiting.event_id]
                self.cursors.pop(waiting.event_id, None)

    def _place(self, waiting: Waiting, cursor: Cursor) -> None:
        if left_line(waiting.seq, cursor):
            # Decided: its booking_status follows (published after the event's message).
            self._drop(waiting)
            return
        waiting.position = queue_position(waiting.seq, cursor[0], cursor[1])
        if waiting.timer is not None or waiting.position == waiting.sent:
            return  # a send is due and will take the latest place
        loop = asyncio.get_running_loop()
        due = waiting.sent_at + self.interval
        if loop.time() >= due:
            self._emit(waiting)
        else:
            waiting.timer = loop.call_at(due, self._flush, waiting)

    def _flush(self, waiting: Waiting) -> None:
        waiting.timer = None
        if waiting.position != waiting.sent:
            self._emit(waiting)

    def _emit(self, waiting: Waiting) -> None:
        waiting.sent = waiting.position
        waiting.sent_at = asyncio.get_running_loop().time()
        self._send(waiting.user_id, waiting.message())

    @staticmethod
    def _cancel(waiting: Waiting) -> None:
        if waiting.timer is not None:
            waiting.timer.cancel()
            waiting.timer = None


async def _read(manager: ConnectionManager, users: Collection[int]) -> list[Any]:
    def read() -> list[bookings_reads.WaitingBooking]:
        with session_scope(manager.session_factory) as session:
            return bookings_reads.waiting_bookings(session, users)

    return await run_in_threadpool(read)


def load_known(manager: ConnectionManager, client: Client) -> bool:
    """The places the new socket hears without a query: True when done (another socket of the
    user here has read them, or sign-in found none in line); False when ``load`` must read."""
    positions, user_id = manager.positions, client.user_id
    if user_id in positions.read:
        for text in positions.places(user_id):
            if not manager.offer(client, text):
                break
        return True
    if client.waits is False:
        positions.read.add(user_id)  # as a read that found nothing: accepted ones follow
        return True
    return False


async def load(manager: ConnectionManager, client: Client) -> None:
    """A socket signed in: its user's waiting bookings, one query, and the new socket hears the
    place of each (the bookings new to this instance go to all the user's sockets). No query
    when ``load_known`` can answer."""
    if load_known(manager, client):
        return
    user_id = client.user_id
    try:
        rows = await _read(manager, [user_id])
    except Exception:  # the socket still serves seats and statuses; places follow the line
        logger.exception("cannot read the places in line of user %s", user_id)
        return
    texts = manager.positions.loaded(rows, [user_id], complete=False).get(user_id, [])
    for text in texts:
        if not manager.offer(client, text):
            return


async def reload(manager: ConnectionManager) -> None:
    """After the Hub's subscription came back: statuses and cursors published meanwhile are
    lost, so every signed-in user's waiting bookings are read again, in one query."""
    users = list(manager.positions.by_user)
    try:
        rows = await _read(manager, users)
    except Exception:
        logger.exception("resync: cannot read places in line")
        return
    manager.positions.loaded(rows, users, complete=True)
