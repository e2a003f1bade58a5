"""Hostile WebSocket clients against a real uvicorn: malformed commands, fuzzed commands.

Each test reads the API process's own log too: a message that crashes a socket's handler shows
there as a traceback even when the client only sees its connection drop.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from devstack import wait_until
from tests.conftest import RUN_DIR, ApiProcess

HANG_GUARD = 30.0  # only keeps a broken run from hanging; nothing asserts on time
COMMANDS = ("auth", "ping", "subscribe_event", "unsubscribe_event", "get_stats")
DEEP = "[" * 2000 + "]" * 2000  # under the size limit, past json's recursion limit


@pytest.fixture(scope="module")
def api(engine: Engine, worker: Any) -> Iterator[ApiProcess]:
    # The fuzz sends as fast as the server answers; the rate limit has its own test below.
    proc = ApiProcess("api-ws-hostile", WS_COMMANDS_PER_SECOND="1000000").start()
    yield proc
    proc.stop()


def server_tracebacks(proc: ApiProcess) -> list[str]:
    log = (RUN_DIR / f"{proc.name}.log").read_text()
    return [line for line in log.splitlines() if "Traceback" in line or "Exception in" in line]


@contextmanager
def signed_in(proc: ApiProcess, token: str) -> Iterator[ClientConnection]:
    with connect(f"{proc.ws_url}/ws?token={token}", open_timeout=HANG_GUARD) as conn:
        assert json.loads(conn.recv(timeout=HANG_GUARD))["type"] == "connection_established"
        yield conn


def replies_until_pong(conn: ClientConnection, frame: str) -> list[dict[str, Any]]:
    """Send ``frame`` then a ping; what the server answered before the pong (heartbeats aside).
    A dropped connection raises ConnectionClosed, which fails the test."""
    conn.send(frame)
    conn.send(json.dumps({"type": "ping"}))
    replies: list[dict[str, Any]] = []
    while True:
        message = json.loads(conn.recv(timeout=HANG_GUARD))
        if message["type"] == "pong":
            return replies
        if message["type"] != "heartbeat":
            replies.append(message)


def first_message_close(proc: ApiProcess, frame: str) -> tuple[int | None, str | None]:
    """Open /ws without a token, send ``frame`` first; the close code and reason received."""
    with connect(f"{proc.ws_url}/ws", open_timeout=HANG_GUARD) as conn:
        conn.send(frame)
        with pytest.raises(ConnectionClosed):
            while True:  # nothing but the close may come: no connection_established
                message = json.loads(conn.recv(timeout=HANG_GUARD))
                assert message["type"] != "connection_established"
    close = conn.protocol.close_rcvd
    assert close is not None, "dropped without a close frame"
    return close.code, close.reason


def test_malformed_commands_get_an_error_and_the_socket_stays_open(api, make_user, token_for):
    cases = {
        json.dumps({"type": "subscribe_event", "data": 5}): "INVALID_EVENT_ID",
        json.dumps({"type": "unsubscribe_event", "data": "x"}): "INVALID_EVENT_ID",
        json.dumps({"type": "subscribe_event", "eventId": 2**80}): "INVALID_EVENT_ID",
        json.dumps({"type": "subscribe_event", "data": [{"eventId": 1}]}): "INVALID_EVENT_ID",
        json.dumps([1, 2]): "UNKNOWN_TYPE",
        json.dumps({"type": ["ping"]}): "UNKNOWN_TYPE",
        DEEP: "INVALID_JSON",
        "[" * 4000 + "]" * 4000: "MESSAGE_TOO_LARGE",
    }
    with signed_in(api, token_for(make_user())) as conn:
        for frame, code in cases.items():
            replies = replies_until_pong(conn, frame)
            assert [(m["type"], m["data"]["code"]) for m in replies] == [("error", code)], frame
            assert replies[0]["data"]["message"]
    assert server_tracebacks(api) == []


def test_a_malformed_first_auth_message_closes_with_1008(api):
    firsts = [
        {"type": "auth", "data": 5},
        {"type": "auth", "data": "x"},
        {"type": "auth", "token": 5},
    ]
    for first in [*map(json.dumps, firsts), DEEP]:
        assert first_message_close(api, first) == (1008, "authentication required"), first
    assert server_tracebacks(api) == []


# ---------------------------------------------------------------- fuzzing

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
fields = st.sampled_from(["eventId", "token", "data"])


def commands() -> st.SearchStrategy[dict[str, Any]]:
    """Each command's type, with any JSON in its fields, and in ``data`` an object of them."""
    nested = st.dictionaries(fields, json_values, max_size=2)
    return st.builds(
        lambda kind, top, data: {"type": kind, **top, **({"data": data} if data else {})},
        st.sampled_from(COMMANDS) | json_values,
        st.dictionaries(fields, json_values, max_size=2),
        st.none() | nested | json_values,
    )


def test_fuzzed_commands_get_an_answer_and_the_socket_stays_open(api, make_user, token_for):
    answers = {"error", "subscribed", "unsubscribed", "stats"}

    @settings(max_examples=300, deadline=None)
    @given(commands())
    def one(conn: ClientConnection, message: dict[str, Any]) -> None:
        replies = replies_until_pong(conn, json.dumps(message))
        assert {m["type"] for m in replies} <= answers, (message, replies)
        for reply in replies:
            if reply["type"] == "error":
                assert reply["data"]["code"] and reply["data"]["message"]

    with signed_in(api, token_for(make_user())) as conn:
        one(conn)
    assert server_tracebacks(api) == []


def test_fuzzed_first_messages_close_with_1008(api):
    @settings(max_examples=40, deadline=None)
    @given(commands())
    def one(message: dict[str, Any]) -> None:
        code, _ = first_message_close(api, json.dumps(message))
        assert code == 1008, message

    one()
    assert server_tracebacks(api) == []


# ---------------------------------------------------------------- caps


@pytest.fixture(scope="module")
def capped(engine: Engine) -> Iterator[ApiProcess]:
    proc = ApiProcess("api-ws-capped", WS_MAX_PER_USER="3", WS_COMMANDS_PER_SECOND="5").start()
    yield proc
    proc.stop()


def test_sockets_per_user_are_capped(capped, make_user, token_for):
    user, other = make_user(), make_user()
    url = f"{capped.ws_url}/ws?token={token_for(user)}"
    with ExitStack() as stack:
        first, *_ = [stack.enter_context(signed_in(capped, token_for(user))) for _ in range(3)]
        with connect(url, open_timeout=HANG_GUARD) as refused:
            with pytest.raises(ConnectionClosed):
                refused.recv(timeout=HANG_GUARD)
            close = refused.protocol.close_rcvd
            assert close is not None
            assert (close.code, close.reason) == (1013, "too many connections for this user")
        with signed_in(capped, token_for(other)):  # the cap is per user
            pass
        first.close()

        def admitted_again() -> bool:
            with connect(url, open_timeout=HANG_GUARD) as again:
                try:
                    return (
                        json.loads(again.recv(timeout=HANG_GUARD))["type"]
                        == "connection_established"
                    )
                except ConnectionClosed:
                    return False  # the closed socket may not be unregistered yet

        wait_until(admitted_again, HANG_GUARD, "a socket admitted once another closed")


def test_a_flooding_socket_is_limited_then_closed(capped, make_user, token_for):
    with signed_in(capped, token_for(make_user())) as conn:
        with suppress(ConnectionClosed):
            for _ in range(300):  # five a second allowed; the server closes long before the end
                conn.send(json.dumps({"type": "ping"}))
        seen = []
        with pytest.raises(ConnectionClosed):
            while True:
                seen.append(json.loads(conn.recv(timeout=HANG_GUARD)))
        assert seen[0]["type"] == "pong"  # the first ones within the limit are answered
        limited = [m for m in seen if m["type"] == "error"]
        assert limited and {m["data"]["code"] for m in limited} == {"RATE_LIMITED"}
        close = conn.protocol.close_rcvd
        assert close is not None
        assert (close.code, close.reason) == (1008, "too many messages")
