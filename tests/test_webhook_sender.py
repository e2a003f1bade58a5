"""The webhook sender against real HTTP servers on loopback, without our services: where it
connects, what it sends as Host and TLS name, and what it never does (follow a redirect, read
an endless reply), and that a kept-alive connection the receiver dropped costs no failure."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from common.webhooks import delivery
from common.webhooks.delivery import MAX_READ, Sender, Target
from devstack import free_port

LOOPBACK = ipaddress.ip_address("127.0.0.1")
NAME = "hooks.example.test"  # resolves nowhere: only the checked address can be reached

Handler = Callable[[socket.socket, bytes], None]  # a connection and the request's head


class Server:
    """Accepts on loopback and hands each request's head to ``handle``; records the heads."""

    def __init__(self, handle: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.port = free_port()
        self.handle, self.tls = handle, tls
        self.heads: list[bytes] = []
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, data = data.split(b"\r\n\r\n", 1)
                length = int(_header(head, b"content-length") or 0)
                while len(data) < length:
                    data += conn.recv(65536)
                data = data[length:]
                self.heads.append(head)
                self.handle(conn, head)
        except OSError:
            return
        finally:
            conn.close()

    def close(self) -> None:
        self.listener.close()


def _header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def ok(conn: socket.socket, head: bytes) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(handle: Handler = ok, tls: ssl.SSLContext | None = None) -> Server:
        servers.append(Server(handle, tls))
        return servers[-1]

    yield start
    for made in SENDERS:
        made.close()
    SENDERS.clear()
    for server in servers:
        server.close()


SENDERS: list[Sender] = []  # closed after each test


def sender(url: str, port: int, host: str = NAME) -> Sender:
    target = Target(url=url, scheme=url.split(":")[0], host=host, port=port, address=LOOPBACK)
    SENDERS.append(Sender(target, connect_timeout=3, timeout=5))
    return SENDERS[-1]


def test_it_connects_to_the_checked_address_with_the_urls_host_and_path(serve):
    server = serve()
    url = f"http://{NAME}:{server.port}/in/hooks?token=abc"
    out = sender(url, server.port).send(b"{}", {"webhook-id": "msg_1"})
    assert out.verdict == "delivered" and out.response_head == "ok"
    request_line, *_ = server.heads[0].split(b"\r\n")
    assert request_line == b"POST /in/hooks?token=abc HTTP/1.1"
    assert _header(server.heads[0], b"host") == f"{NAME}:{server.port}".encode()
    assert _header(server.heads[0], b"webhook-id") == b"msg_1"


def test_a_redirect_is_the_answer_and_is_not_followed(serve):
    elsewhere = serve()

    def redirect(conn: socket.socket, head: bytes) -> None:
        location = f"http://127.0.0.1:{elsewhere.port}/steal"
        conn.sendall(
            f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )

    server = serve(redirect)
    out = sender(f"http://{NAME}:{server.port}/", server.port).send(b"{}", {})
    assert (out.verdict, out.status_code) == ("failed", 307)
    assert elsewhere.heads == []


def test_an_endless_reply_is_read_to_its_bound_and_the_next_goes_on_a_new_connection(serve):
    def endless(conn: socket.socket, head: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
        block = b"x" * 65536
        try:
            while True:
                conn.sendall(block)
        except OSError:
            return

    server = serve(endless)
    hooks = sender(f"http://{NAME}:{server.port}/", server.port)
    first = hooks.send(b"{}", {})
    assert first.verdict == "delivered" and first.response_head == "x" * 256
    assert hooks.send(b"{}", {}).verdict == "delivered"
    assert server.connections == 2  # the cut-off reply's connection is never reused
    assert MAX_READ == 64 * 1024


def test_a_kept_alive_connection_the_receiver_dropped_costs_no_failure(serve):
    def once(conn: socket.socket, head: bytes) -> None:
        ok(conn, head)
        conn.shutdown(socket.SHUT_RDWR)  # an idle timeout on the receiver's side

    server = serve(once)
    hooks = sender(f"http://{NAME}:{server.port}/", server.port)
    outcomes = [hooks.send(b"{}", {"webhook-id": f"msg_{i}"}).verdict for i in range(3)]
    assert outcomes == ["delivered"] * 3
    # A request already on its way when the receiver closes is sent again, with its id: the
    # receiver may see it twice (it deduplicates by webhook-id), never a message lost.
    ids = [_header(head, b"webhook-id") for head in server.heads]
    assert set(ids) == {b"msg_0", b"msg_1", b"msg_2"}
    assert all(ids.count(i) <= 2 for i in ids)  # sent again once at most


def test_keep_alive_sends_a_run_of_messages_on_one_connection(serve):
    server = serve()
    hooks = sender(f"http://{NAME}:{server.port}/", server.port)
    assert [hooks.send(b"{}", {}).verdict for _ in range(5)] == ["delivered"] * 5
    assert server.connections == 1


def test_tls_names_the_urls_host_and_checks_its_certificate(serve, tmp_path, monkeypatch, request):
    cert, key = _certificate(tmp_path, NAME)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    names: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    server = serve(tls=context)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the test's certificate is the only CA
    delivery._tls_context.cache_clear()
    request.addfinalizer(delivery._tls_context.cache_clear)

    out = sender(f"https://{NAME}:{server.port}/", server.port).send(b"{}", {})
    assert out.verdict == "delivered" and names == [NAME]

    other = serve(tls=context)
    refused = sender(f"https://other.test:{other.port}/", other.port, "other.test").send(b"{}", {})
    assert refused.verdict == "retry" and "SSL" in (refused.error or "")
    assert other.heads == []


def _certificate(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key),
         "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key
