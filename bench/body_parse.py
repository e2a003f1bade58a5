"""What reading a booking body strictly costs the lean path, against the hand-written reading
it replaced, side by side in one run (docs/BENCHMARKS.md, "Strict input").

    python -m bench.body_parse [--number 200000]

``strict`` is what the lean path runs (``api.lean_path._booking``: ``model_validate_json`` on
the strict ``BookingCreate``); ``by hand`` is the former ``json.loads`` and type checks, kept
here only as the yardstick.
"""

from __future__ import annotations

import argparse
import json
import timeit
from functools import partial

from api.lean_path import _booking

MAX_ID, MAX_QUANTITY = 2**31 - 1, 1000
BODIES = {
    "plain": b'{"eventId": 12345, "quantity": 2}',
    "refused (true)": b'{"eventId": true}',
    "refused (nested)": b"[" * 1000,
}


def by_hand(body: bytes) -> tuple[int, int] | None:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if type(data) is not dict or not data.keys() <= {"eventId", "quantity"}:
        return None
    event_id, quantity = data.get("eventId"), data.get("quantity", 1)
    if type(event_id) is not int or type(quantity) is not int:
        return None
    if not (1 <= event_id <= MAX_ID and 1 <= quantity <= MAX_QUANTITY):
        return None
    return event_id, quantity


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.body_parse")
    parser.add_argument("--number", type=int, default=200_000)
    number = parser.parse_args().number
    print(f"{'body':<18} {'strict µs':>10} {'by hand µs':>11} {'ratio':>6}")
    for name, body in BODIES.items():
        runs = number if name != "refused (nested)" else number // 20
        strict = min(timeit.repeat(partial(_booking, body), number=runs, repeat=3)) / runs
        hand = min(timeit.repeat(partial(by_hand, body), number=runs, repeat=3)) / runs
        print(f"{name:<18} {strict * 1e6:>10.2f} {hand * 1e6:>11.2f} {strict / hand:>6.2f}")


if __name__ == "__main__":
    main()
