"""Redis key and pub/sub channel names, built in one place for the API, the worker and tests."""

from __future__ import annotations

from functools import cache
from urllib.parse import urlparse

from common.settings import get_settings

PREFIX = "ebs"


@cache
def _namespace(redis_url: str) -> str:
    path = urlparse(redis_url).path.strip("/")
    return f"{PREFIX}:{path if path.isdigit() else 0}"


def namespace() -> str:
    """Keys live in one Redis db, but pub/sub channels are shared by the whole server: channels
    carry the db number, so deployments (or a dev server and a test run) sharing one Redis
    server never hear each other's messages."""
    return _namespace(get_settings().REDIS_URL)


def events_pattern() -> str:
    """What the API's single subscriber listens on for seat and admin changes."""
    return f"{namespace()}:event:*"


def decisions_channel() -> str:
    """Every decision of a committed batch in one message; each API process fans it out to its
    own waiters and sockets (decoding one message per batch, not one per decision)."""
    return f"{namespace()}:decisions"


def control_channel() -> str:
    return f"{namespace()}:control"


def event_channel(event_id: int) -> str:
    """Seat changes and admin changes of one event."""
    return f"{namespace()}:event:{event_id}"


def parse_channel(channel: str) -> tuple[str, int] | None:
    """``("event", 7)`` for ``ebs:0:event:7``; None for anything else."""
    head, _, rest = channel.rpartition(":")
    base, _, kind = head.rpartition(":")
    if base != namespace() or not rest.isdigit():
        return None
    return kind, int(rest)


def hold_timer_key(event_id: int, expires_at_us: int) -> str:
    """Set when the expiry timer of the event's holds ending at that microsecond is sent, so the
    worker and the sweeper send it once (common/bookings/holds.py, ``set_timers``)."""
    return f"{PREFIX}:hold-timer:{event_id}:{expires_at_us}"


def signal_key(event_id: int) -> str:
    """Set by a request's signal until a drain of the event takes it (common/bookings/signals.py),
    so a burst sends a handful of tasks."""
    return f"{PREFIX}:signal:event:{event_id}"


def metric_key(name: str) -> str:
    return f"{PREFIX}:metrics:{name}"


def rate_key(scope: str, ident: str) -> str:
    """A fixed-window counter of ``common.ratelimit`` (e.g. login attempts per account)."""
    return f"{PREFIX}:rate:{scope}:{ident}"
