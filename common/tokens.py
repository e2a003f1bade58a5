"""A bounded cache of verified access tokens: a token's signature is checked once, not per request.

Keyed by the token string itself, so only the exact bytes that were verified hit the cache. An
entry holds the user id the token names and is used only until the earlier of the token's
``exp`` and ``TOKEN_CACHE_TTL`` seconds after it was verified; an expired token is refused as
before. The cache knows nothing about users: every request that reads or writes a booking also
checks in the same SQL statement that the user still exists (401 for a deleted user, at once).
The one answer that does not look the user up is a refusal from memory (409 SOLD_OUT, nothing
stored; see ``api.fastpath``), which is what anyone can read on the event's page anyway.

When the cache is full (``TOKEN_CACHE_SIZE``) the oldest entries are dropped first.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from common.security import read_access_token
from common.settings import Settings


class TokenCache:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.size = settings.TOKEN_CACHE_SIZE
        self.ttl = settings.TOKEN_CACHE_TTL
        # token -> (user id, monotonic deadline, wall-clock exp)
        self._entries: OrderedDict[str, tuple[int, float, float]] = OrderedDict()
        self._lock = threading.Lock()  # the WebSocket manager verifies from threads too

    def user_id(self, token: str) -> int:
        """The user id a valid token names; InvalidToken for anything else (expired included)."""
        entry = self._entries.get(token)
        if entry is not None:
            user_id, until, exp = entry
            if time.monotonic() < until and time.time() < exp:
                return user_id
            with self._lock:
                self._entries.pop(token, None)
        user_id, expires = read_access_token(token, self.settings)
        if self.size and self.ttl:
            with self._lock:
                self._entries[token] = (user_id, time.monotonic() + self.ttl, expires.timestamp())
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return user_id

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_caches: dict[int, TokenCache] = {}


def token_cache(settings: Settings) -> TokenCache:
    """One cache per Settings object (the app's, or a test's own)."""
    cache = _caches.get(id(settings))
    if cache is None or cache.settings is not settings:
        cache = _caches[id(settings)] = TokenCache(settings)
    return cache
