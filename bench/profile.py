"""Where the API's time goes, from a ``--profile`` run: py-spy's GIL samples by part of the work.

    python -m bench.profile bench/results/prof/queued/api.txt --cpu-ms 2.87

Each sample (a stack of the thread holding the GIL) is charged to the innermost frame that
belongs to a known part: HTTP (server, framework, middleware, event loop), auth (tokens),
validation (body parsing and schemas), database (SQLAlchemy, psycopg2, our SQL callers),
Redis (client, signals, Celery producer), waiter (the pub/sub Hub and its waiters), logging.
Generic helpers (json, re, datetime, ...) are charged to whoever called them.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# First match wins, tested from the innermost frame outwards.
PARTS: list[tuple[str, re.Pattern[str]]] = [
    ("auth", re.compile(r"jwt/|common/tokens\.py|common/security\.py|token_user_id")),
    ("waiter", re.compile(r"api/(pubsub|hub)\.py|api/realtime/|_await_decision|on_message")),
    ("redis", re.compile(r"redis/|kombu/|celery/|common/bookings/signals\.py")),
    (
        "database",
        re.compile(
            r"sqlalchemy/|psycopg2|common/bookings/(intake(_sql)?|service)\.py|api/seats\.py"
        ),
    ),
    ("logging", re.compile(r"logging/|common/logs\.py")),
    (
        "validation",
        re.compile(r"pydantic|fastapi/dependencies|fastapi/_compat|_booking \(api/lean_path"),
    ),
    (
        "HTTP",
        re.compile(
            r"uvicorn/|httptools|starlette/|fastapi/|asyncio/|anyio/|api/middleware\.py|"
            r"api/metrics\.py|api/lean_path\.py|prometheus_client|concurrent/|api/routes/|"
            r"api/errors\.py|uvloop|opentelemetry|trace/__init__|_logs/_internal"
        ),
    ),
]
GENERIC = re.compile(
    r"json/|\(re/|<frozen|threading\.py|abc\.py|typing\.py|enum\.py|datetime|uuid|hmac\.py|"
    r"base64\.py|queue\.py|weakref|contextlib\.py|inspect\.py|encodings/|<string>|functools"
)


def part(stack: list[str]) -> str:
    for frame in reversed(stack):
        if GENERIC.search(frame):
            continue
        for name, pattern in PARTS:
            if pattern.search(frame):
                return name
        return "other"
    return "other"


def summarise(path: Path) -> tuple[Counter[str], int]:
    parts: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        # py-spy puts "process ..." and "thread ..." frames first; skip them.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        parts[part(frames)] += int(count)
        total += int(count)
    return parts, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument(
        "--cpu-ms", type=float, help="the API's measured CPU ms per request, to split by share"
    )
    args = parser.parse_args()
    parts, total = summarise(args.file)
    # On a busy machine a thread can hold the GIL while it waits for a core, so samples give
    # shares; the bench's CPU meter gives the total they divide.
    print(f"{total} GIL samples")
    for name, count in parts.most_common():
        share = count / total
        ms = f"  {share * args.cpu_ms:.3f} ms/request" if args.cpu_ms else ""
        print(f"  {name:<11} {100 * share:5.1f} %{ms}")


if __name__ == "__main__":
    main()
