"""A recording WebSocket client and REST helpers for the live-update tests.

Every wait here is bounded only so a broken run cannot hang; no test asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

SEAT_TYPES = ("booking_created", "booking_cancelled", "seat_update")
HANG_GUARD = 60.0


class LiveClient:
    """Reads every message in the background and keeps them, in order, in ``messages``."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.messages: list[dict[str, Any]] = []
        self.done = False
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, token: str | None = None, **options: Any) -> LiveClient:
        if token is not None:
            url += ("&" if "?" in url else "?") + f"token={token}"
        conn = await connect(url, open_timeout=HANG_GUARD, **options)
        return cls(conn)

    async def _read(self) -> None:
        try:
            async for raw in self.conn:
                self.messages.append(json.loads(raw))
                self._changed.set()
        except ConnectionClosed:
            pass
        finally:
            self.done = True
            self._changed.set()

    @property
    def close_code(self) -> int | None:
        return self.conn.close_code

    async def send(self, message_type: str, **fields: Any) -> None:
        await self.conn.send(json.dumps({"type": message_type, **fields}))

    async def wait_for(self, predicate: Callable[[list[dict[str, Any]]], Any], what: str) -> Any:
        try:
            async with asyncio.timeout(HANG_GUARD):
                while True:
                    result = predicate(self.messages)
                    if result:
                        return result
                    if self.done:
                        raise AssertionError(f"connection closed ({self.close_code}) before {what}")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}: {self.messages[-5:]}") from None

    async def first(self, message_type: str, **match: Any) -> dict[str, Any]:
        """The data of the first message of this type whose data has these values."""

        def find(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
            for message in messages:
                data = message.get("data", {})
                if message["type"] == message_type and all(
                    data.get(k) == v for k, v in match.items()
                ):
                    return data
            return None

        return await self.wait_for(find, f"{message_type} {match}")

    async def request(self, message_type: str, reply: str, **fields: Any) -> dict[str, Any]:
        """Send a command and wait for the next ``reply`` after it."""
        start = len(self.messages)
        await self.send(message_type, **fields)

        def find(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
            return next((m["data"] for m in messages[start:] if m["type"] == reply), None)

        return await self.wait_for(find, f"{reply} after {message_type}")

    async def wait_closed(self) -> int | None:
        await self.wait_for(lambda _: self.done, "the server to close the connection")
        return self.close_code

    def of_type(self, *types: str) -> list[dict[str, Any]]:
        return [m["data"] for m in self.messages if m["type"] in types]

    def seat_versions(self, event_id: int) -> list[int]:
        """Versions seen for the event: its snapshots and seat messages, in arrival order."""
        versions = []
        for message in self.messages:
            data = message.get("data", {})
            if message["type"] in (*SEAT_TYPES, "subscribed") and data.get("eventId") == event_id:
                versions.append(data["version"])
            elif message["type"] == "resync":
                versions += [e["version"] for e in data["events"] if e["eventId"] == event_id]
        return versions

    async def close(self) -> None:
        await self.conn.close()
        await self._reader


def small_buffer_socket(port: int) -> socket.socket:
    """A connected socket with a tiny receive buffer, so a client that stops reading makes the
    server's sends back up after a few messages rather than a few megabytes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def book(
    http: httpx.AsyncClient, token: str, event_id: int, quantity: int = 1
) -> dict[str, Any]:
    """Book through the REST API and wait until a worker has decided it."""
    response = await http.post(
        "/api/bookings",
        json={"eventId": event_id, "quantity": quantity},
        headers={"Authorization": f"Bearer {token}", "Prefer": "wait=30"},
    )
    assert response.status_code == 201, response.text
    return response.json()["data"]
