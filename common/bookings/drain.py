"""Draining an event's queue (worker side): a batch per transaction until the line is empty."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from sqlalchemy.orm import Session, sessionmaker

from common.bookings import procedures
from common.bookings.schemas import Decision
from common.db import on_commit, session_scope


class Drained(NamedTuple):
    decisions: list[Decision]
    busy: bool  # left because another task was draining the event


def drain_event(
    factory: sessionmaker[Session],
    event_id: int,
    *,
    batch_size: int,
    worker: str,
    publish: Callable[[list[Decision]], object],
    take_signal: Callable[[], bool],
    resignal: Callable[[], object],
) -> Drained:
    """Decide every queued request of one event, a batch per transaction, publishing each
    batch after it commits. If another task is draining the event, make sure its signal is set
    (``resignal``) and leave at once. After a short batch, take the event's signal and, if a
    request signalled meanwhile, read again (the protocol of common/bookings/signals.py). Safe
    to run twice or in parallel: only undecided rows are touched, one drain at a time.
    """
    decided: list[Decision] = []
    while True:
        try:
            with session_scope(factory) as session:
                batch = procedures.process_event_queue(session, event_id, batch_size, worker)
                if batch:
                    on_commit(session, lambda batch=batch: publish(batch))  # type: ignore[misc]
        except procedures.EventBusy:
            # The drain holding the event ends by taking the signal and reading again.
            resignal()
            return Drained(decided, busy=True)
        decided.extend(batch)
        if len(batch) < batch_size and not take_signal():
            return Drained(decided, busy=False)
