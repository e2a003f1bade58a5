"""The webhook benchmark's receiver: a process of its own on loopback that answers every POST 200
at once and notes when it came (``python -m bench.receiver --port P``).

A receiver is someone else's machine; here it shares our two cores, so it does as little per
request as one can: an asyncio protocol on uvloop with httptools (uvicorn's parser, in C),
no framework, one fixed reply. What it costs is counted apart (bench/webhooks.py). Signatures
are checked after the sale, not while it runs: ``POST /_verify`` with ``{path: secret}`` verifies
every body received on each path with the ``standardwebhooks`` verifier (from the ``from``-th
on: the verifier refuses a timestamp older than five minutes, so each sale's messages are
verified right after it). ``GET /_count`` says how many arrived; ``GET /_records`` gives
``[path, webhook-id, received at, decision timestamp]`` for each one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httptools
import uvloop
from standardwebhooks import Webhook, WebhookVerificationError

Record = tuple[str, str, float, bytes, dict[str, str]]  # path, id, at, body, webhook-* headers
OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


class Receiver:
    def __init__(self) -> None:
        self.received: list[Record] = []

    def answer(self, method: bytes, url: bytes, headers: dict[str, str], body: bytes) -> bytes:
        """The reply to one request; a POST outside ``/_`` is a webhook."""
        parts = urlsplit(url.decode())
        if method == b"POST" and not parts.path.startswith("/_"):
            self.received.append(
                (parts.path, headers.get("webhook-id", ""), time.time(), body, headers)
            )
            return OK
        start = int(parse_qs(parts.query).get("from", ["0"])[0])
        if parts.path == "/_count":
            return _json({"count": len(self.received)})
        if parts.path == "/_records":
            return _json([
                [path, msg_id, at,
                 datetime.fromisoformat(json.loads(body)["timestamp"]).timestamp()]
                for path, msg_id, at, body, _ in self.received[start:]
            ])  # fmt: skip
        if parts.path == "/_verify":
            return _json(self.verify(json.loads(body), start))
        return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"

    def verify(self, secrets: dict[str, str], start: int) -> dict[str, int]:
        verifiers = {path: Webhook(secret) for path, secret in secrets.items()}
        verified = failed = 0
        for path, _, _, body, headers in self.received[start:]:
            try:
                verifiers[path].verify(body, headers)
                verified += 1
            except (KeyError, WebhookVerificationError):
                failed += 1
        return {"verified": verified, "failed": failed}


def _json(value: Any) -> bytes:
    body = json.dumps(value).encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


class Connection(asyncio.Protocol):
    """One kept-alive connection: httptools calls back as it parses."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    # httptools' callbacks
    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", {}, []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode().lower()
        if key.startswith("webhook-"):
            self.headers[key] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method, body = self.parser.get_method(), b"".join(self.body)
        self.transport.write(self.receiver.answer(method, self.url, self.headers, body))
        if not self.parser.should_keep_alive():
            self.transport.close()


async def serve(port: int) -> None:
    receiver = Receiver()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(receiver), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.receiver", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
