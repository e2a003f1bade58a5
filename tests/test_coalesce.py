"""Seat messages coalesced per event (api/realtime/coalesce.py), against a model: whatever the
order and timing of the workers' messages, watchers see versions only rise, at most one seat
message per interval (per line interval when only the line moved), none held past its
interval, and always the newest state last.

Pure: no services; time is a number the test moves.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.realtime.coalesce import SEAT_TYPES, Coalescer, Key

pytestmark = pytest.mark.fast

INTERVAL = 0.1
LINE_INTERVAL = 0.5

message = st.tuples(
    st.integers(0, 30),  # version
    st.integers(0, 5),  # requests that left the line
    st.sampled_from(sorted(SEAT_TYPES) + ["event_updated"]),
    st.floats(0, 0.25),  # time since the previous message
)


def seat(version: int, departed: int, kind: str) -> dict[str, Any]:
    return {
        "type": kind,
        "data": {
            "eventId": 1,
            "availableSeats": 100 - version,
            "seatCapacity": 100,
            "version": version,
            "confirmed": 1,
            "line": {"through": departed, "gone": [], "waiting": 0, "waitlisted": 0},
        },
    }


def replay(
    messages: list[tuple[int, int, str, float]], interval_of: Any = None
) -> tuple[list[tuple[float, Key]], float]:
    """Feed the messages in order, running every flush when it falls due; (time, key) emitted."""
    now = 0.0
    emitted: list[tuple[float, Key]] = []
    due: list[float] = []
    coalescer = Coalescer(
        INTERVAL, lambda _e, key, _m: emitted.append((now, key)), LINE_INTERVAL, interval_of
    )

    def run_until(t: float) -> None:
        nonlocal now
        while due and min(due) <= t:
            now = min(due)
            due.remove(now)
            again = coalescer.flush(1, now)
            if again is not None:
                due.append(again)
        now = t

    for version, departed, kind, gap in messages:
        run_until(now + gap)
        flush_at = coalescer.offer(1, seat(version, departed, kind), now)
        if flush_at is not None:
            due.append(flush_at)
    run_until(now + 10 * LINE_INTERVAL)
    return emitted, now


@settings(max_examples=400, deadline=None)
@given(st.lists(message, min_size=1, max_size=40))
def test_watchers_see_versions_rise_and_always_the_newest_state_last(messages):
    emitted, _ = replay(messages)
    keys = [k for _, k in emitted]
    assert keys == sorted(set(keys)), "a key went back or repeated"
    newest = max((v, d, "") for v, d, _, _ in messages)
    assert keys and keys[-1] == newest, "coalescing hid the last state"


@settings(max_examples=400, deadline=None)
@given(st.lists(message.filter(lambda m: m[2] in SEAT_TYPES), min_size=1, max_size=40))
def test_seat_messages_go_at_most_once_an_interval_and_wait_at_most_one(messages):
    emitted, _ = replay(messages)
    for (earlier, before), (later, after) in zip(emitted, emitted[1:], strict=False):
        # Seats moved: one interval apart at least; only the line moved: one line interval.
        gap = INTERVAL if after[0] != before[0] else LINE_INTERVAL
        assert later - earlier >= gap - 1e-9
    # Each message offered is covered (itself, or one as new, sent) within one interval if it
    # moves the seats past all before it, else within one line interval.
    now, highest = 0.0, -1
    for version, departed, _, gap in messages:
        now += gap
        wait = INTERVAL if version > highest else LINE_INTERVAL
        highest = max(highest, version)
        assert any(k >= (version, departed, "") and t <= now + wait + 1e-9 for t, k in emitted)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(message.filter(lambda m: m[2] in SEAT_TYPES), min_size=1, max_size=40),
    st.integers(0, 20_000),  # watchers of the event on this process
)
def test_the_interval_grows_with_the_watchers_and_the_last_state_still_goes(messages, watchers):
    """WS_SEAT_DELIVERIES: past the budget of writes a second, an event's seat messages come
    further apart (at most the line interval), and the newest state still goes out last."""
    budget = 10_000
    emitted, _ = replay(messages, lambda _event: watchers / budget)
    seat_gap = max(INTERVAL, min(watchers / budget, LINE_INTERVAL))
    keys = [k for _, k in emitted]
    assert keys == sorted(set(keys)), "a key went back or repeated"
    assert keys and keys[-1] == max((v, d, "") for v, d, _, _ in messages)
    for (earlier, before), (later, after) in zip(emitted, emitted[1:], strict=False):
        gap = seat_gap if after[0] != before[0] else LINE_INTERVAL
        assert later - earlier >= gap - 1e-9, f"{watchers} watchers: messages {gap} s apart"


def test_the_snapshot_is_the_newest_state_heard_even_while_it_waits():
    coalescer = Coalescer(INTERVAL, lambda *_: None)
    coalescer.offer(1, seat(3, 0, "booking_created"), 0.0)
    coalescer.offer(1, seat(5, 0, "booking_created"), 0.01)  # waits for the interval
    coalescer.offer(1, seat(4, 0, "booking_created"), 0.02)  # out of order: older
    key, snapshot = coalescer.snapshot(1, 0.03, 1.0) or ((0, 0, ""), {})
    assert key == (5, 0, "")
    assert snapshot["availableSeats"] == 95 and snapshot["seatCapacity"] == 100


def test_a_batch_that_only_waitlists_is_not_dropped_as_a_repeat():
    """Joining a waitlist moves neither the seats (version) nor the line's departures: the
    waitlist's length is still news, ordered by the worker's timestamp."""
    sent: list[dict[str, Any]] = []
    coalescer = Coalescer(INTERVAL, lambda _e, _k, message: sent.append(message), LINE_INTERVAL)
    for n, stamp in (
        (1, "2026-12-05T18:00:00.100000+00:00"),
        (2, "2026-12-05T18:00:00.200000+00:00"),
    ):
        message = seat(7, 3, "line_update")
        message["data"]["line"]["waitlisted"] = n
        message["data"]["timestamp"] = stamp
        flush_at = coalescer.offer(1, message, n * 2 * LINE_INTERVAL)
        if flush_at is not None:
            coalescer.flush(1, flush_at)
    assert [m["data"]["line"]["waitlisted"] for m in sent] == [1, 2]
    _, snapshot = coalescer.snapshot(1, 4 * LINE_INTERVAL, 10.0) or ((), {})
    assert snapshot["line"]["waitlisted"] == 2


def test_coalesced_messages_carry_every_count_of_the_batches_they_stand_for():
    """Holds and expiries included: the organiser's page adds them up from the stream."""
    sent: list[dict[str, Any]] = []
    coalescer = Coalescer(INTERVAL, lambda _e, _k, message: sent.append(message), LINE_INTERVAL)
    due = []
    for version, counts in ((1, {"held": 2}), (2, {"held": 1, "expired": 3}), (3, {"held": 4})):
        message = seat(version, 0, "booking_created")
        message["data"].update({"confirmed": 0, **counts})
        flush_at = coalescer.offer(1, message, version * INTERVAL / 10)
        if flush_at is not None:
            due.append(flush_at)
    for at in due:
        coalescer.flush(1, at)
    totals = {n: sum(m["data"].get(n, 0) for m in sent) for n in ("held", "expired")}
    assert totals == {"held": 7, "expired": 3}
    assert sent[-1]["type"] == "seat_update"  # seats taken and given back in what it covers
