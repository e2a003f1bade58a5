"""Users found active lately, so that opening a socket rarely reads the database.

A user is looked up in PostgreSQL at most once every ``WS_USER_RECHECK`` seconds per instance,
however many of their sockets open meanwhile (a reconnect storm brings each user's ten tabs
back together; they share one query). That query also says whether the user has a request in
a line, so their places are read only then (``api.realtime.positions.load``). A user deleted
within the last ``WS_USER_RECHECK`` seconds may still open a socket on an instance that found
them active just before: a bounded staleness, like that of the sockets they already hold.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from common.db import session_scope
from common.users import service as users_service


class ActiveUsers:
    """Users found active lately, each trusted for ``ttl`` seconds, and the look-ups under
    way: the sockets of one user opening together share one query."""

    def __init__(self, ttl: float, size: int = 100_000) -> None:
        self.ttl, self.size = ttl, size
        self._until: OrderedDict[int, float] = OrderedDict()
        self._checks: dict[int, asyncio.Future[bool | None]] = {}

    async def check(
        self, user_id: int, session_factory: sessionmaker[Session]
    ) -> tuple[bool, bool | None]:
        """(active, waits in a line; None if not looked up)."""
        until = self._until.get(user_id)
        if until is not None and time.monotonic() < until:
            return True, None
        pending = self._checks.get(user_id)
        if pending is None:
            pending = asyncio.ensure_future(run_in_threadpool(_look_up, session_factory, user_id))
            self._checks[user_id] = pending
            pending.add_done_callback(lambda _: self._checks.pop(user_id, None))
        waits = await asyncio.shield(pending)
        if waits is None:
            self._until.pop(user_id, None)
            return False, None
        if self.ttl:
            self._until[user_id] = time.monotonic() + self.ttl
            self._until.move_to_end(user_id)
            while len(self._until) > self.size:
                self._until.popitem(last=False)
        return True, waits


def _look_up(session_factory: sessionmaker[Session], user_id: int) -> bool | None:
    with session_scope(session_factory) as session:
        return users_service.waits_in_line(session, user_id)
