"""Many events on sale at once: does decision throughput grow with worker processes?

    python -m bench.many_events --events 20 --seats 1000 --requests 2000 --workers 1,2,4

For each worker count W: M fresh events of S seats each, R pending requests per event written
straight into PostgreSQL (as intake leaves them during a sale), then a Celery worker with W
processes (``--concurrency W``) and one ``bookings.process_event`` per event, as the signals
send them. The clock runs from the first task sent to the last request decided. Reported per W:
decisions/s, CPU seconds of the worker and of PostgreSQL's backends per 1,000 decisions, and the
seat check. The intake side is left out on purpose (bench.flash_sale measures it), so the
figures are the deciders' alone. Its own database and Redis db, as bench.flash_sale.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.cpu import CpuMeter
from bench.flash_sale import machine
from bench.stack import (
    Data,
    Stack,
    StackConfig,
    add_target_args,
    check_targets,
    prepare_database,
)
from devstack import ROOT, WorkerProcess


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.many_events", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--events", "-m", type=int, default=20, help="events on sale at once (M)")
    add("--seats", "-s", type=int, default=1_000, help="seats of each event (S)")
    add("--requests", "-r", type=int, default=2_000, help="pending requests per event (R)")
    add("--users", "-u", type=int, default=5_000, help="users the requests are spread over")
    add("--max-per-user", type=int, default=10, help="each event's maxSeatsPerUser")
    add("--workers", default="1,2,4", help="worker process counts to run, in this order")
    add("--repeat", type=int, default=1, help="runs per worker count (the best is reported)")
    add("--batch-size", type=int, default=None, help="BATCH_SIZE for the worker")
    add_target_args(parser)
    add("--out", type=Path, default=ROOT / "bench" / "results", help="JSON and logs")
    return parser.parse_args(argv)


def write_backlog(data: Data, users: list[int], args: argparse.Namespace, tag: str) -> list[int]:
    events = [
        data.create_event(args.seats, args.max_per_user, f"Sale {tag}-{i}")
        for i in range(args.events)
    ]
    # Interleaved across events, as concurrent sales arrive.
    data.sql(
        "INSERT INTO bookings (booking_id, user_id, event_id, quantity, status, created_at) "
        "SELECT 'bk_many_' || e || '_' || g, (%s::int[])[1 + (g * 7 + e) %% %s], e, 1,"
        " 'pending', now() FROM generate_series(1, %s) g, unnest(%s::int[]) e ORDER BY g, e",
        (users, len(users), args.requests, events),
    )
    data.vacuum()
    return events


def run_once(
    data: Data, users: list[int], args: argparse.Namespace, workers: int, tag: str
) -> dict[str, Any]:
    from celery import Celery

    from common.tasks import BOOKINGS_QUEUE, PROCESS_EVENT

    events = write_backlog(data, users, args, tag)
    total = len(events) * args.requests
    config = StackConfig(
        database_url=args.database_url,
        redis_url=args.redis_url,
        api_workers=1,
        worker_concurrency=workers,
        pool_size=None,
        batch_size=args.batch_size,
        start_worker=False,
        reuse_database=True,
        log_dir=args.out / "logs",
    )
    stack = Stack(config)  # its API is never started: the worker alone is measured
    worker = WorkerProcess(
        "worker", config.log_dir, config.env(), concurrency=workers,
        queues="bookings", hostname=f"many-{os.getpid()}-{tag}@%h",
    )  # fmt: skip
    stack.processes.append(worker.start())
    sender = Celery("bench-many", set_as_current=False)
    sender.config_from_object("celeryconfig")
    sender.conf.broker_url = args.redis_url
    try:
        with CpuMeter(stack, data, args.database_url) as cpu:
            started = time.perf_counter()
            for event_id in events:
                sender.send_task(PROCESS_EVENT, args=[event_id], queue=BOOKINGS_QUEUE)
            deadline = started + 900
            while time.perf_counter() < deadline:
                left = data.sql(
                    "SELECT EXISTS (SELECT 1 FROM bookings WHERE event_id = ANY (%s)"
                    " AND status = 'pending')",
                    (events,),
                )[0][0]
                if not left:
                    break
                time.sleep(0.01)
            seconds = time.perf_counter() - started
    finally:
        sender.close()
        stack.stop()
    states = [data.event_state(e) for e in events]
    left = sum(s["byStatus"].get("pending", 0) for s in states)
    per_k = 1000 / (total - left) if total > left else 0.0
    return {
        "workers": workers,
        "decisions": total - left,
        "seconds": round(seconds, 3),
        "decisionsPerSecond": round((total - left) / seconds, 1),
        "cpuSecondsPer1000": {
            part: round(cpu.seconds.get(part, 0.0) * per_k, 3) for part in ("worker", "postgres")
        },
        "left": left,
        "confirmedSeats": sum(s["confirmedSeats"] for s in states),
        "capacity": sum(s["capacity"] for s in states),
        "invariantViolations": sum(s["invariantViolations"] for s in states),
        "loadAverageAfter": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_targets(args.database_url, args.redis_url, args.reuse_database)
    prepare_database(args.database_url, args.reuse_database)
    args.out.mkdir(parents=True, exist_ok=True)
    data = Data(args.database_url)
    runs: list[dict[str, Any]] = []
    try:
        users = data.create_users(args.users)
        counts = [int(w) for w in args.workers.split(",") if w]
        for workers in counts:
            for attempt in range(args.repeat):
                run = run_once(data, users, args, workers, f"w{workers}-{attempt}")
                runs.append(run)
                print(
                    f"workers={workers} decisions/s={run['decisionsPerSecond']}"
                    f" cpu/1000={run['cpuSecondsPer1000']} left={run['left']}",
                    flush=True,
                )
    finally:
        data.close()
    best = {
        w: max((r for r in runs if r["workers"] == w), key=lambda r: r["decisionsPerSecond"])
        for w in sorted({r["workers"] for r in runs})
    }
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {k: str(v) for k, v in vars(args).items()},
        "runs": runs,
        "best": list(best.values()),
    }
    path = args.out / f"many-events-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\n{'workers':>8} {'decisions/s':>12} {'worker CPU s/1k':>16} {'PG CPU s/1k':>12}")
    for run in best.values():
        cpu = run["cpuSecondsPer1000"]
        print(
            f"{run['workers']:>8} {run['decisionsPerSecond']:>12} {cpu['worker']:>16}"
            f" {cpu['postgres']:>12}"
        )
    bad = [
        r
        for r in runs
        if r["left"] or r["invariantViolations"] or r["confirmedSeats"] > r["capacity"]
    ]
    print(f"results: {path}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
