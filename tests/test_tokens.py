"""The hand-written token check (``common.tokens``) against PyJWT (``common.security``).

Pure: no database, no Redis, no server. Every token here is a mutation of a valid one, and the
two checks must give the same verdict: the same user and the same end of validity, or both a
refusal (``InvalidToken``, never another exception). Both apply one claim policy,
``common.security.CLAIMS``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import SecretStr
from sqlalchemy import Integer

from common.errors import InvalidToken
from common.security import ALGORITHM, create_access_token, read_access_token
from common.settings import Settings
from common.tokens import PLAIN_HEADER, TokenCache, _verify_plain

pytestmark = pytest.mark.fast

SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
# No cache: every call checks the token afresh.
SETTINGS = Settings(_env_file=None, JWT_SECRET=SecretStr(SECRET), TOKEN_CACHE_SIZE=0)
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# Seconds from now: never so close to now that the two checks, reading the clock a moment
# apart, could disagree about an expiry.
OFFSETS = st.one_of(st.integers(5, 10**9), st.integers(-(10**9), -5))
PROPERTY = hypothesis_settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(header: str, payload: str) -> str:
    digest = hmac.new(SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(digest)}"


def pyjwt_verdict(token: str) -> tuple[int, float] | str:
    try:
        user_id, valid_until = read_access_token(token, SETTINGS)
    except InvalidToken:
        return "refused"
    return user_id, valid_until.timestamp()


def assert_same_verdict(token: str) -> None:
    expected = pyjwt_verdict(token)
    quick = _verify_plain(token, SECRET.encode())  # None: "not mine, ask PyJWT"
    if quick is not None:
        assert quick == expected, token
    try:
        served: int | str = TokenCache(SETTINGS).user_id(token)
    except InvalidToken:
        served = "refused"
    assert served == (expected if expected == "refused" else expected[0]), token


def good_token(user_id: int = 7) -> str:
    return create_access_token(user_id, "user", SETTINGS)


def test_a_token_we_issue_takes_the_quick_check_and_is_accepted():
    token = good_token()
    assert _verify_plain(token, SECRET.encode()) == pyjwt_verdict(token) != "refused"


@pytest.mark.parametrize("segment", [0, 1, 2])
def test_every_character_of_every_segment_changed(segment):
    """Each position of each segment, replaced by each character the base64url alphabet and
    its near misses offer: the last signature character this way has its unused bits set."""
    parts = good_token().split(".")
    for position in range(len(parts[segment])):
        for character in ALPHABET + "=+/.~ é\x00":
            changed = list(parts)
            text = changed[segment]
            changed[segment] = text[:position] + character + text[position + 1 :]
            assert_same_verdict(".".join(changed))


@pytest.mark.parametrize("segment", [0, 1, 2])
@pytest.mark.parametrize("suffix", ["=", "==", "===", "A", "AA", "AAA", "AAAA", "\n"])
def test_padding_and_length(segment, suffix):
    parts = good_token().split(".")
    for ending in (suffix, ""):
        for cut in (0, 1, 2, 3):
            changed = list(parts)
            changed[segment] = changed[segment][: len(changed[segment]) - cut] + ending
            assert_same_verdict(".".join(changed))


@given(
    segment=st.sampled_from([0, 1, 2]),
    position=st.integers(0, 200),
    replacement=st.text(min_size=0, max_size=3),
)
@PROPERTY
def test_any_change_to_a_valid_token(segment, position, replacement):
    parts = good_token().split(".")
    text = parts[segment]
    position %= len(text) + 1
    parts[segment] = text[:position] + replacement + text[position + 1 :]
    assert_same_verdict(".".join(parts))


def json_number_or_text(draw: st.DrawFn, now: int) -> str:
    """A claim's value as JSON text: times near now, extremes, and things that are no time."""
    return draw(
        st.one_of(
            OFFSETS.map(lambda d: json.dumps(now + d)),
            st.sampled_from(
                [
                    "100000000000000000000",  # 10^20
                    "253402300799",  # the last second of year 9999
                    "253402300800",  # the first of year 10000
                    "9" * 5000,
                    "-1",
                    "0",
                    "1e400",
                    "NaN",
                    "Infinity",
                    "true",
                    "null",
                    '"7"',
                    "[]",
                    "{}",
                ]
            ),
            OFFSETS.map(lambda d: json.dumps(now + d + 0.5)),
            OFFSETS.map(lambda d: json.dumps(str(now + d))),
        )
    )


@st.composite
def payloads(draw: st.DrawFn) -> str:
    """A claims object as JSON text, keys possibly repeated (``json.loads`` keeps the last)."""
    now = int(time.time())
    subjects = st.one_of(
        st.integers(1, 2**31 - 1).map(lambda n: json.dumps(str(n))),
        st.sampled_from(
            [
                json.dumps(str(2**31 - 1)),
                json.dumps(str(2**31)),  # one past users.id's largest
                json.dumps(str(2**63)),
                json.dumps("9" * 5000),
                json.dumps("0"),
                json.dumps("007"),
                json.dumps("-7"),
                json.dumps("+7"),
                json.dumps(" 7"),
                json.dumps("7_0"),
                json.dumps("\u0667"),  # ARABIC-INDIC DIGIT SEVEN
                json.dumps("seven"),
                "7",
                "2147483648",
                "null",
            ]
        ),
    )
    pairs: list[tuple[str, str]] = [
        ("sub", draw(subjects)),
        ("role", '"user"'),
        ("iat", json.dumps(now - draw(st.integers(5, 10**6)))),
        ("nbf", json.dumps(now - draw(st.integers(5, 10**6)))),
        ("exp", json.dumps(now + draw(st.integers(5, 10**8)))),
    ]
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(["sub", "iat", "nbf", "exp", "role", "aud", "extra"]))
        value = draw(subjects) if name == "sub" else json_number_or_text(draw, now)
        pairs.insert(draw(st.integers(0, len(pairs))), (name, value))
    dropped = draw(st.sets(st.sampled_from(["sub", "iat", "nbf", "exp", "role"]), max_size=2))
    pairs = [(k, v) for k, v in pairs if k not in dropped or draw(st.booleans())]
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in pairs) + "}"


@given(payload=payloads())
@PROPERTY
@example(payload='{"sub":"7","role":"user","iat":1,"nbf":1,"exp":100000000000000000000}')
@example(payload='{"sub":"7","role":"user","iat":1,"nbf":1,"exp":253402300800}')
@example(payload='{"sub":"' + "9" * 5000 + '","role":"user","iat":1,"nbf":1,"exp":4000000000}')
@example(payload='{"sub":"2147483648","role":"user","iat":1,"nbf":1,"exp":4000000000}')
@example(payload='{"sub":"7","sub":"8","iat":1,"exp":4000000000,"exp":1}')
def test_signed_claims_of_any_shape_and_size(payload):
    """Correctly signed, so only the claims decide: both checks apply the same policy."""
    assert_same_verdict(sign(PLAIN_HEADER, b64(payload.encode())))


def test_the_signature_character_with_unused_bits_set_is_refused():
    """43 characters carry 256 bits: the last one's low four bits are unused and must be 0,
    as PyJWT requires, or one token would have sixteen spellings."""
    head, payload, signature = good_token().split(".")
    last = ALPHABET.index(signature[-1])
    for bits in range(1, 16):
        spelling = f"{head}.{payload}.{signature[:-1]}{ALPHABET[last ^ bits]}"
        with pytest.raises(InvalidToken):
            TokenCache(SETTINGS).user_id(spelling)


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": 10**20},
        {"exp": 253_402_300_800},
        {"sub": "9" * 5000},
        {"sub": str(2**31)},
        {"sub": "0"},
    ],
)
def test_claims_out_of_bounds_are_refused_not_an_error(claims: dict[str, Any]):
    now = int(time.time())
    base = {"sub": "7", "role": "user", "iat": now, "nbf": now, "exp": now + 60}
    token = sign(PLAIN_HEADER, b64(json.dumps(base | claims, separators=(",", ":")).encode()))
    with pytest.raises(InvalidToken):
        read_access_token(token, SETTINGS)
    with pytest.raises(InvalidToken):
        TokenCache(SETTINGS).user_id(token)


def test_the_policy_bounds_come_from_what_they_bound():
    from datetime import UTC, datetime

    from common.security import CLAIMS
    from common.users.models import User

    # users.id is a PostgreSQL integer: the largest user id a token may name.
    assert type(User.__table__.c.id.type) is Integer
    assert CLAIMS.max_user_id == 2**31 - 1
    # The last moment a token may be valid until is the last second a datetime holds.
    assert datetime.fromtimestamp(CLAIMS.max_valid_until, UTC).year == 9999
    with pytest.raises(ValueError):
        datetime.fromtimestamp(CLAIMS.max_valid_until + 1, UTC)


def _forge(secret: str, header: dict, claims: dict) -> str:
    return jwt.encode(claims, secret, algorithm=header.get("alg", ALGORITHM), headers=header)


def test_the_quick_token_check_accepts_exactly_what_pyjwt_accepts():
    settings = SETTINGS
    secret = SECRET
    now = int(time.time())
    good = create_access_token(7, "user", settings)
    head, payload, signature = good.split(".")
    other = create_access_token(8, "user", settings).split(".")[1]
    claims = {"sub": "7", "role": "user", "iat": now, "nbf": now, "exp": now + 60}
    tokens = [
        good,
        f"{head}.{other}.{signature}",  # another payload under this signature
        f"{head}.{payload}.{signature[:-2]}",
        f"{head}.{payload}.{signature}==",
        create_access_token(
            7, "user", settings.model_copy(update={"JWT_SECRET": SecretStr("x" * 40)})
        ),
        jwt.encode(claims, None, algorithm="none"),
        _forge(secret, {}, {**claims, "exp": now - 1}),
        _forge(secret, {}, {**claims, "nbf": now + 60}),
        _forge(secret, {}, {**claims, "iat": now + 60}),
        _forge(secret, {}, {**claims, "aud": "someone"}),
        _forge(secret, {}, {**claims, "sub": "seven"}),
        _forge(secret, {}, {**claims, "sub": 7}),
        _forge(secret, {}, {**claims, "exp": float(now + 60)}),
        _forge(secret, {"kid": "1"}, claims),
        _forge(secret, {}, {k: v for k, v in claims.items() if k != "iat"}),
    ]
    # Our own tokens take the quick check; the table holds it to PyJWT's verdict.
    assert _verify_plain(good, secret.encode()) == (
        7,
        read_access_token(good, settings)[1].timestamp(),
    )
    for token in tokens:
        try:
            expected: int | str = read_access_token(token, settings)[0]
        except InvalidToken:
            expected = "refused"
        try:
            got: int | str = TokenCache(settings).user_id(token)
        except InvalidToken:
            got = "refused"
        assert got == expected, token
