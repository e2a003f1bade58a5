"""Idle, slow and oversized clients against a real uvicorn: each connection is bounded in time,
and a WebSocket message in size.

uvicorn itself only closes a connection that idles after a response; one that sends nothing, or
half a request, stays open forever. ``api/protocol.py`` bounds the headers and
``BodyLimitMiddleware`` the body; the server here runs with one-second bounds so the test does
not wait long, and asserts only what clients see, never how long it took.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine
from websockets.asyncio.client import connect as connect_async
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from devstack import wait_until
from tests.conftest import ApiProcess

HANG_GUARD = 60.0  # only keeps a broken run from hanging
HOST = b"Host: 127.0.0.1\r\n"  # one of the test run's ALLOWED_HOSTS
HEALTH = b"GET /health HTTP/1.1\r\n"


@pytest.fixture(scope="module")
def api(engine: Engine) -> Iterator[ApiProcess]:
    proc = ApiProcess("api-connections", HTTP_HEADER_TIMEOUT="1", HTTP_BODY_TIMEOUT="1").start()
    yield proc
    proc.stop()


class Peer:
    """A raw client connection that sends ``first`` and keeps what the server answers."""

    def __init__(self, port: int, first: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setblocking(False)
        if first:
            self.sock.sendall(first)
        self.received = b""
        self.closed = False

    def poll(self) -> bool:
        """Read what has arrived; True once the server has closed the connection."""
        while not self.closed and select.select([self.sock], [], [], 0)[0]:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            self.received += chunk
            self.closed = not chunk
        return self.closed

    def response(self) -> tuple[int, dict[str, Any]]:
        head, _, body = self.received.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)


def all_closed(peers: list[Peer]) -> bool:
    return sum(peer.poll() for peer in peers) == len(peers)  # poll each, no short cut


def test_idle_half_sent_and_slow_connections_are_closed(api, make_user, token_for):
    login = b"POST /api/auth/login HTTP/1.1\r\n" + HOST + b"Content-Type: application/json\r\n"
    idle = [Peer(api.port, b"") for _ in range(100)]
    half_headers = [
        Peer(api.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ") for _ in range(50)
    ]
    slow_bodies = [Peer(api.port, login + b"Content-Length: 100\r\n\r\n{") for _ in range(30)]
    # A plain booking request takes the lean path (api/lean_path.py), which reads its own body.
    booking = (
        b"POST /api/bookings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer %s\r\nContent-Length: 30\r\n\r\n{"
    ) % token_for(make_user()).encode()
    slow_bodies += [Peer(api.port, booking) for _ in range(5)]
    # A keep-alive connection idling after its response, then sending half of the next request.
    second_half = Peer(api.port, HEALTH + HOST + b"\r\n" + HEALTH)
    peers = [*idle, *half_headers, *slow_bodies, second_half]
    try:
        # A WebSocket is past its headers: the header deadline does not apply to it.
        with connect(f"{api.ws_url}/ws?token={token_for(make_user())}") as ws:
            assert json.loads(ws.recv(timeout=HANG_GUARD))["type"] == "connection_established"
            wait_until(lambda: all_closed(peers), HANG_GUARD, "every slow connection closed")
            ws.send(json.dumps({"type": "ping"}))
            assert json.loads(ws.recv(timeout=HANG_GUARD))["type"] == "pong"

        assert all(peer.received == b"" for peer in idle + half_headers)
        for peer in slow_bodies:
            status, body = peer.response()
            assert status == 408
            assert body["error"]["code"] == "REQUEST_TIMEOUT"
        assert second_half.received.startswith(b"HTTP/1.1 200")
        # The server still serves everyone else.
        fresh = Peer(api.port, HEALTH + HOST + b"Connection: close\r\n\r\n")
        peers.append(fresh)
        wait_until(fresh.poll, HANG_GUARD, "a fresh request answered")
        assert fresh.received.startswith(b"HTTP/1.1 200")
    finally:
        for peer in peers:
            peer.sock.close()


def test_a_body_sent_in_time_in_pieces_is_read_whole(api, make_user):
    """Chunks that together arrive within the bound are one request, answered as usual."""
    user = make_user()
    body = json.dumps({"email": user.email, "password": "password123"}).encode()
    head = b"POST /api/auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    peer = Peer(api.port, head + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
    try:
        for i in range(0, len(body), 10):
            peer.sock.sendall(body[i : i + 10])
        wait_until(peer.poll, HANG_GUARD, "the login answered")
        status, answer = peer.response()
        assert status == 200, answer
    finally:
        peer.sock.close()


def peak_memory_mib(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MiB."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def test_huge_first_websocket_messages_are_refused_unread(engine):
    """32 sockets that have not signed in each send a 15 MiB first message: uvicorn closes each
    with 1009 from the frame's header (WS_MAX_SIZE), and the API never holds the messages."""
    api = ApiProcess("api-ws-size").start()  # its own process: its peak memory is this test's
    try:
        assert api.proc is not None
        before = peak_memory_mib(api.proc.pid)
        message = "x" * (15 * 1024 * 1024)

        async def send_one() -> int | None:
            async with connect_async(f"{api.ws_url}/ws", open_timeout=HANG_GUARD) as ws:
                try:
                    await ws.send(message)
                    await asyncio.wait_for(ws.wait_closed(), HANG_GUARD)
                except ConnectionClosed:
                    pass
                return ws.close_code

        async def all_of_them() -> list[int | None]:
            return await asyncio.gather(*(send_one() for _ in range(32)))

        codes = asyncio.run(all_of_them())
        grown = peak_memory_mib(api.proc.pid) - before
        assert codes == [1009] * 32  # message too big
        # Less than two of those messages: none was read into memory.
        assert grown < 30, f"the API's peak memory grew by {grown:.0f} MiB"
        assert api.running
    finally:
        api.stop()
