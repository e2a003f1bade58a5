"""Fan-out: the Hub's listener, routing each pub/sub message to the sockets that should see it.

Seat messages of an event go through its ``Coalescer`` (at most one per ``WS_COALESCE_INTERVAL``,
always the newest) and each one that comes out is encoded and framed once, then written to every
subscriber (``ConnectionManager.deliver``). ``booking_status`` goes to the owner's sockets only,
never coalesced, and ``resync`` (the Hub's subscription came back) to every client as fresh
snapshots. The line in event messages, the statuses and the bookings this instance accepted also
feed the places in line (``positions``), which send ``queue_position`` to owners. Dispatch never
awaits a socket: it only writes to buffers and fills queues.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from api.realtime import positions
from api.realtime.coalesce import Coalescer, Key
from api.realtime.connections import ConnectionManager, ready_transport
from api.realtime.frames import text_frame
from api.realtime.snapshots import resync

_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))


def install(manager: ConnectionManager) -> None:
    """Give ``manager`` its coalescer, whose messages go to the event's subscribers."""
    settings = manager.settings
    budget = settings.WS_SEAT_DELIVERIES

    def interval_of(event_id: int) -> float:
        # Each seat message is one write per watcher here: past ``budget`` writes a second,
        # the event's messages come further apart instead of the process falling behind.
        return len(manager.by_event.get(event_id, ())) / budget

    manager.coalescer = Coalescer(
        settings.WS_COALESCE_INTERVAL,
        lambda e, k, m: _emit(manager, e, k, m),
        settings.WS_LINE_INTERVAL,
        interval_of if budget else None,
    )


def dispatch(manager: ConnectionManager, kind: str, ident: int, message: dict[str, Any]) -> None:
    """Hub listener: route one pub/sub message. Never awaits a socket."""
    if kind == "resync":
        manager.coalescer.forget()  # whatever was missed makes the memory stale
        manager.spawn(resync(manager))
        manager.spawn(positions.reload(manager))
        return
    if kind == "event":
        # Every event's messages reach this listener (the Hub subscribes to the pattern of all
        # event channels): the line they carry moves the places of connected users' bookings
        # whether or not any socket follows the event, and the seat state kept here is every
        # event's snapshot.
        manager.positions.on_event(ident, message)
        if message.get("type") == "event_deleted":
            manager.coalescer.forget(ident)
            subscribers = manager.by_event.get(ident)
            if subscribers:
                text = _ENCODER.encode(message)
                for client in list(subscribers):
                    manager.offer(client, text)
                    manager.forget(client, ident)
            return
        loop = asyncio.get_running_loop()
        flush_at = manager.coalescer.offer(ident, message, loop.time())
        if flush_at is not None:
            loop.call_at(flush_at, _flush, manager, ident)
    elif kind == "user" and message.get("type") == "booking_status":
        owners = manager.by_user.get(ident)
        if not owners:
            return
        manager.positions.on_status(ident, message.get("data") or {})
        text = _ENCODER.encode(message)
        for client in list(owners):
            manager.offer(client, text)
    elif kind == "user" and message.get("type") == "booking_accepted":
        manager.positions.on_accepted(ident, message["data"])  # in-process, never relayed


def _flush(manager: ConnectionManager, event_id: int) -> None:
    loop = asyncio.get_running_loop()
    again = manager.coalescer.flush(event_id, loop.time())
    if again is not None:
        loop.call_at(again, _flush, manager, event_id)


def _emit(manager: ConnectionManager, event_id: int, key: Key, message: dict[str, Any]) -> None:
    subscribers = manager.by_event.get(event_id)
    if not subscribers:
        return
    text = _ENCODER.encode(message)  # once per message and process, not per socket
    frame = text_frame(text)
    limit = manager.settings.WS_WRITE_BUFFER
    written = 0
    # The loop every seat message runs once per watcher (``deliver``'s rule, with the buffer
    # check and the count kept out of the call), the common case being a socket with nothing
    # queued, written at once.
    for client in list(subscribers):
        floor = client.floor.get(event_id)
        if floor is not None and key <= floor:
            continue  # its snapshot is already this new (the handover never repeats)
        if client.held:
            held = client.held.get(event_id)
            if held is not None:
                # Its snapshot is being read: held until then (api.realtime.snapshots).
                held.append((key, text))
                if len(held) > manager.settings.WS_QUEUE_SIZE:
                    manager.drop(client)
                continue
        transport = ready_transport(client)
        if transport is None:
            manager.offer(client, text)
        elif transport.get_write_buffer_size() > limit:
            manager.drop(client)  # the kernel's buffer and ours are full: it is not reading
        else:
            transport.write(frame)
            written += 1
    manager.direct_writes += written
