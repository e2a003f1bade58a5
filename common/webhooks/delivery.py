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

import ipaddress
import logging
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal
from urllib.parse import urlsplit

import httpx

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


# httpx logs each request's URL at INFO; a receiver's URL may carry its token in the query.
logging.getLogger("httpx").setLevel(logging.WARNING)


class Sender:
    """Attempts to one target over one kept-alive connection to its checked address.

    Requests go straight to the transport, below ``httpx.Client``: a redirect is an answer
    (never followed), and a receiver's cookies are neither kept nor sent back (the client's
    cookie jar cost a tenth of a delivery's CPU)."""

    def __init__(self, target: Target, *, connect_timeout: float, timeout: float) -> None:
        self.target = target
        # trust_env=False: no proxy from the environment, which would connect elsewhere.
        self.transport = httpx.HTTPTransport(trust_env=False)
        self.timeout = httpx.Timeout(timeout, connect=connect_timeout).as_dict()
        self.url = httpx.URL(target.url).copy_with(host=str(target.address))
        self.host_header = urlsplit(target.url).netloc  # as the URL wrote it (no credentials)

    def send(self, body: bytes, headers: dict[str, str]) -> Outcome:
        started = time.monotonic()
        extensions: dict[str, object] = {"timeout": self.timeout}
        if self.target.scheme == "https":
            extensions["sni_hostname"] = self.target.host
        try:
            request = httpx.Request(
                "POST",
                self.url,
                content=body,
                headers={**headers, "host": self.host_header, "user-agent": "ebs-webhooks/1"},
                extensions=extensions,
            )
            response = self.transport.handle_request(request)
            try:
                head = bytearray()
                for chunk in response.iter_raw():
                    head.extend(chunk)
                    if len(head) >= MAX_READ:
                        break
            finally:
                response.close()
        except httpx.TimeoutException:
            return self._failure("timeout", started)
        except httpx.HTTPError as exc:
            return self._failure(f"connection: {type(exc).__name__}", started)
        latency = int((time.monotonic() - started) * 1000)
        status = response.status_code
        wait = None
        if status in (429, 503):
            wait = retry_after(response.headers.get("retry-after"), datetime.now(UTC))
        text = bytes(head[:HEAD]).decode("utf-8", "replace")
        return Outcome(verdict_of(status), status, None, latency, text, wait)

    @staticmethod
    def _failure(error: str, started: float) -> Outcome:
        latency = int((time.monotonic() - started) * 1000)
        return Outcome("retry", None, error, latency, None)

    def close(self) -> None:
        self.transport.close()
