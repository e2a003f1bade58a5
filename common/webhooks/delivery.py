"""One HTTP attempt to a user-given URL, made safely, and what its outcome means.

Safety (docs/WEBHOOKS.md, "Safety"): the host is resolved once per drain; every address it
resolves to must be public (or inside ``WEBHOOK_ALLOWED_NETWORKS``), and the connection goes to
the address checked, with the name kept for ``Host`` and for TLS (SNI and the certificate), so
a second lookup can never point it elsewhere (DNS rebinding). No redirects, no proxies from the
environment, short timeouts, and at most ``MAX_READ`` bytes of a reply are read.

Outcomes: 2xx delivered; 408, 429, 5xx, a timeout or a broken connection are retried (429 and
503 after their ``Retry-After``); 410 disables the endpoint; any other status fails the message
without a retry.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import select
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal
from urllib.parse import urlsplit

from common.errors import DestinationRefused

MAX_READ = 64 * 1024  # bytes of a reply read; a longer one is cut off (and its connection)
HEAD = 256  # bytes of the reply kept in the delivery log
RETRY_STATUSES = frozenset({408, 429})
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Target:
    """A URL with the one address it was resolved to and checked against."""

    url: str
    scheme: str
    host: str
    port: int
    address: Address


def is_allowed(address: Address, allowed: list[str]) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in ipaddress.ip_network(net, strict=False) for net in allowed):
        return True
    # Not global covers loopback, private, link-local (the metadata address 169.254.169.254
    # among them), shared and reserved ranges.
    return address.is_global and not address.is_multicast


def check_url(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DestinationRefused("The URL must be http:// or https:// with a host")
    if parts.username or parts.password:
        raise DestinationRefused("The URL must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise DestinationRefused("The URL's port is not valid") from exc
    return parts.scheme, parts.hostname, port


def resolve(url: str, allowed: list[str]) -> Target:
    """Resolve the URL's host once and check every address; ``DestinationRefused`` if any is
    not allowed or the name does not resolve."""
    scheme, host, port = check_url(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise DestinationRefused(f"The host {host!r} does not resolve") from exc
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    refused = [a for a in addresses if not is_allowed(a, allowed)]
    if refused or not addresses:
        raise DestinationRefused(
            f"The host {host!r} resolves to an address webhooks may not go to ({refused[0]})"
            if refused
            else f"The host {host!r} does not resolve"
        )
    return Target(url=url, scheme=scheme, host=host, port=port, address=addresses[0])


Verdict = Literal["delivered", "retry", "failed", "gone"]


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    status_code: int | None
    error: str | None
    latency_ms: int
    response_head: str | None
    retry_after: float | None = None  # seconds the receiver asked for


def verdict_of(status: int) -> Verdict:
    if 200 <= status < 300:
        return "delivered"
    if status == 410:
        return "gone"
    if status in RETRY_STATUSES or status >= 500:
        return "retry"
    return "failed"


def retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


class _Connection(http.client.HTTPConnection):
    """Plain HTTP to the checked address: ``host`` is that address; ``Host`` is set by the
    sender. The connect timeout bounds the connect, the read timeout every read after it."""

    def __init__(self, target: Target, connect_timeout: float, timeout: float) -> None:
        super().__init__(str(target.address), target.port, timeout=connect_timeout)
        self.read_timeout = timeout

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.read_timeout)
        self.sock = sock


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The system's CAs, hostname checked. Made once per process: loading the CA bundle costs
    ~20 ms of CPU, which every drain (one per decided batch in a sale) would pay again."""
    return ssl.create_default_context()


class _TLSConnection(_Connection):
    """TLS over the same connect: SNI and the certificate check use the URL's host name, not
    the address connected to."""

    def __init__(self, target: Target, connect_timeout: float, timeout: float) -> None:
        super().__init__(target, connect_timeout, timeout)
        self.server_name = target.host
        self.context = _tls_context()

    def connect(self) -> None:
        super().connect()
        self.sock = self.context.wrap_socket(self.sock, server_hostname=self.server_name)


def _stale(sock: socket.socket | None) -> bool:
    """A kept-alive socket the receiver closed (or wrote to unasked) reads as ready."""
    if sock is None:
        return False
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class Sender:
    """Attempts to one target over one kept-alive HTTP/1.1 connection to its checked address.

    ``http.client`` directly: it follows no redirect (one is an answer), keeps no cookies,
    reads no proxy from the environment and logs nothing, and costs a delivery a fraction of
    httpx's CPU (docs/BENCHMARKS.md, "Webhooks")."""

    def __init__(self, target: Target, *, connect_timeout: float, timeout: float) -> None:
        self.target = target
        kind = _TLSConnection if target.scheme == "https" else _Connection
        self.connection = kind(target, connect_timeout, timeout)
        self.timeout = timeout
        parts = urlsplit(target.url)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.host_header = parts.netloc  # as the URL wrote it (check_url refuses credentials)

    def send(self, body: bytes, headers: dict[str, str]) -> Outcome:
        started = time.monotonic()
        request = {**headers, "host": self.host_header, "user-agent": "ebs-webhooks/1"}
        reused = self.connection.sock is not None
        if reused and _stale(self.connection.sock):
            self.connection.close()
            reused = False
        try:
            try:
                response = self._exchange(body, request)
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
                if not reused:
                    raise
                # The receiver closed the idle connection as we wrote: once more on a new one
                # (the same webhook-id, so at worst a duplicate it deduplicates).
                self.connection.close()
                response = self._exchange(body, request)
            head = self._read(response, started)
        except TimeoutError:
            self.connection.close()
            return self._failure("timeout", started)
        except (OSError, http.client.HTTPException) as exc:
            self.connection.close()
            return self._failure(f"connection: {type(exc).__name__}", started)
        latency = int((time.monotonic() - started) * 1000)
        status = response.status
        wait = None
        if status in (429, 503):
            wait = retry_after(response.getheader("retry-after"), datetime.now(UTC))
        text = head[:HEAD].decode("utf-8", "replace")
        return Outcome(verdict_of(status), status, None, latency, text, wait)

    def _exchange(self, body: bytes, headers: dict[str, str]) -> http.client.HTTPResponse:
        self.connection.request("POST", self.path, body, headers)
        return self.connection.getresponse()

    def _read(self, response: http.client.HTTPResponse, started: float) -> bytes:
        """At most ``MAX_READ`` bytes, within ``timeout`` in all (a reply trickled a byte at a
        time never holds the queue longer); the connection is kept only if the reply ended."""
        head = bytearray()
        while len(head) < MAX_READ and not response.isclosed():
            if time.monotonic() - started > self.timeout:
                raise TimeoutError
            chunk = response.read1(MAX_READ - len(head))
            if not chunk:
                break
            head.extend(chunk)
        if response.length == 0:
            response.read()  # read1 leaves a finished reply open; this ends it, keeping the socket
        if not response.isclosed():
            response.close()
            self.connection.close()
        return bytes(head)

    @staticmethod
    def _failure(error: str, started: float) -> Outcome:
        latency = int((time.monotonic() - started) * 1000)
        return Outcome("retry", None, error, latency, None)

    def close(self) -> None:
        self.connection.close()
