"""A real HTTP receiver for webhook tests: answers from a script (a status, 429 with
Retry-After, a hang, a closed connection) and records every request it got."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

from devstack import free_port


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    answer: int | str
    at: float


class Receiver:
    def __init__(self, port: int | None = None, hang: float = 3.0) -> None:
        self.port = port or free_port()
        self.script: deque[int | str] = deque()  # answers to give first; then ``default``
        self.default: int | str = 200
        self.hang = hang
        self.got: list[Received] = []
        self.lock = threading.Lock()
        self.first_request = threading.Event()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as receivers do

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    answer = receiver.script.popleft() if receiver.script else receiver.default
                    receiver.got.append(
                        Received(dict(self.headers.items()), body, answer, time.time())
                    )
                receiver.first_request.set()
                if answer == "hang":
                    time.sleep(receiver.hang)
                    self.close_connection = True
                    return
                if answer == "close":
                    self.close_connection = True
                    return
                status = int(answer)
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "1")
                reply = b'{"ok": true}' if status < 300 else b"no thanks"
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def accepted(self) -> list[Received]:
        with self.lock:
            return [r for r in self.got if isinstance(r.answer, int) and 200 <= r.answer < 300]

    def verified_ids(self, secret: str) -> dict[str, bytes]:
        """webhook-id -> body of every request answered 2xx; each must verify with ``secret``,
        and a duplicate must carry the same body as the first."""
        verifier = Webhook(secret)
        seen: dict[str, bytes] = {}
        for r in self.accepted():
            try:
                verifier.verify(r.body, r.headers)
            except WebhookVerificationError as exc:  # pragma: no cover - the assertion's message
                raise AssertionError(f"{r.headers.get('webhook-id')} does not verify") from exc
            msg_id = r.headers["webhook-id"]
            assert seen.setdefault(msg_id, r.body) == r.body, f"{msg_id} changed between sends"
        return seen
