"""A bounded cache of verified access tokens: a token's signature is checked once, not per request.

Keyed by the token string itself, so only the exact bytes that were verified hit the cache. An
entry holds the user id the token names and is used only until the earlier of the token's
``exp`` and ``TOKEN_CACHE_TTL`` seconds after it was verified; an expired token is refused as
before. The cache knows nothing about users: every request that reads or writes a booking also
checks in the same SQL statement that the user still exists (401 for a deleted user, at once).
The one answer that does not look the user up is a refusal from memory (409 SOLD_OUT, nothing
stored; see ``api.lean_path``), which is what anyone can read on the event's page anyway.

When the cache is full (``TOKEN_CACHE_SIZE``) the oldest entries are dropped first.

A token that is not cached yet is checked by ``_verify_plain`` when it has exactly the shape this
service issues (the header ``create_access_token`` writes, only the claims it writes, integer
times, a numeric subject, the signature in its one canonical spelling): the HMAC and the claims
checked by hand, about a tenth of PyJWT's cost, whose per-character base64 checks dominated a
refusal's CPU. The claims are judged by the same policy as PyJWT's (``common.security.CLAIMS``).
Anything else, and every token that fails there, is judged by PyJWT (``read_access_token``), so
this path can only accept what PyJWT accepts and every refusal comes from PyJWT;
``tests/test_tokens.py`` feeds both the same mutated tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
from collections import OrderedDict

from common.security import ALGORITHM, CLAIMS, read_access_token
from common.settings import Settings

# The header segment of every token create_access_token signs (PyJWT writes it this way).
PLAIN_HEADER = (
    base64.urlsafe_b64encode(
        json.dumps({"alg": ALGORITHM, "typ": "JWT"}, separators=(",", ":")).encode()
    )
    .rstrip(b"=")
    .decode()
)
PLAIN_CLAIMS = {"sub", "role", "iat", "nbf", "exp"}
SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
# A SHA-256 digest is 43 characters, the last carrying 2 bits: the ones whose other 4 are 0.
SIGNATURE_ENDS = frozenset("AEIMQUYcgkosw048")


def _verify_plain(token: str, key: bytes) -> tuple[int, float] | None:
    """(user id, valid until) of a valid token of our own plain shape; None: ask PyJWT."""
    header, _, rest = token.partition(".")
    payload, _, signature = rest.partition(".")
    if header != PLAIN_HEADER or not SEGMENT.fullmatch(payload) or not SEGMENT.fullmatch(signature):
        return None
    try:
        given = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
        expected = hmac.new(key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        # The last character's unused bits are not part of the digest: only the spelling
        # PyJWT accepts (those bits 0) passes, so a token has one spelling on either path.
        if not hmac.compare_digest(given, expected) or signature[-1] not in SIGNATURE_ENDS:
            return None
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except ValueError:
        return None
    if type(claims) is not dict or not claims.keys() <= PLAIN_CLAIMS:
        return None
    exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf", 0)
    if None in map(claims.get, CLAIMS.required):
        return None
    user_id, until = CLAIMS.user_id(claims.get("sub")), CLAIMS.valid_until(exp)
    now, leeway = time.time(), CLAIMS.leeway
    if (
        user_id is None
        or until is None
        or type(exp) is not int
        or type(iat) is not int
        or type(nbf) is not int
        or not until > now
        or not now + leeway >= iat >= 0
        or nbf > now + leeway
    ):
        return None
    return user_id, until


class TokenCache:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.size = settings.TOKEN_CACHE_SIZE
        self.ttl = settings.TOKEN_CACHE_TTL
        # token -> (user id, monotonic deadline, wall-clock end of validity: exp and leeway)
        self._entries: OrderedDict[str, tuple[int, float, float]] = OrderedDict()
        self._lock = threading.Lock()  # the WebSocket manager verifies from threads too
        self._key = settings.JWT_SECRET.get_secret_value().encode()

    def user_id(self, token: str) -> int:
        """The user id a valid token names; InvalidToken for anything else (expired included)."""
        entry = self._entries.get(token)
        if entry is not None:
            user_id, until, valid_until = entry
            if time.monotonic() < until and time.time() < valid_until:
                return user_id
            with self._lock:
                self._entries.pop(token, None)
        plain = _verify_plain(token, self._key)
        if plain is None:
            user_id, deadline = read_access_token(token, self.settings)
            plain = user_id, deadline.timestamp()
        user_id, valid_until = plain
        if self.size and self.ttl:
            with self._lock:
                self._entries[token] = (user_id, time.monotonic() + self.ttl, valid_until)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return user_id


_caches: dict[int, TokenCache] = {}


def token_cache(settings: Settings) -> TokenCache:
    """One cache per Settings object (the app's, or a test's own)."""
    cache = _caches.get(id(settings))
    if cache is None or cache.settings is not settings:
        cache = _caches[id(settings)] = TokenCache(settings)
    return cache
