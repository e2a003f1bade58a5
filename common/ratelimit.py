"""Fixed-window counters in Redis, for limits that must hold across API instances.

One ``INCR`` and one ``EXPIRE ... NX`` per key in a single round trip: the first hit of a window
starts its clock, and the key's remaining TTL is the ``Retry-After`` a refused caller gets. A
fixed window lets a burst of up to twice the limit straddle a boundary; for login throttling
that is good enough and costs nothing to keep.

If Redis cannot be reached the check lets the request through (logged): Redis being down must
not lock every user out of their account, and the sweeper keeps bookings moving meanwhile.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import redis

from common.channels import rate_key
from common.errors import TooManyRequests

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limit:
    scope: str
    ident: str
    max_hits: int
    window: int

    @property
    def key(self) -> str:
        # Hashed: keys stay short, and no email address sits in Redis in the clear.
        digest = hashlib.sha256(self.ident.encode()).hexdigest()[:32]
        return rate_key(self.scope, digest)


def hit(client: redis.Redis, limits: list[Limit], error: type[TooManyRequests]) -> None:
    """Count one attempt against every limit; raise ``error`` with ``Retry-After`` if any is
    exceeded. Refused attempts count too, so hammering does not shorten the wait."""
    try:
        pipe = client.pipeline(transaction=False)
        for limit in limits:
            pipe.incr(limit.key)
            pipe.expire(limit.key, limit.window, nx=True)
            pipe.ttl(limit.key)
        replies = pipe.execute()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        logger.warning("rate limit not checked, Redis unavailable: %s", exc)
        return
    retry_after = 0
    for n, limit in enumerate(limits):
        count, ttl = replies[3 * n], replies[3 * n + 2]
        if count > limit.max_hits:
            retry_after = max(retry_after, ttl if ttl > 0 else limit.window)
    if retry_after:
        raise error(headers={"Retry-After": str(retry_after)})
