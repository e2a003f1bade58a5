"""Flash-sale benchmark: the queued pipeline against the synchronous design, in one run.

    python -m bench.flash_sale --clients 200 --requests 20000 --seats 5000   (make bench)

It builds its own database and uses its own Redis db, starts uvicorn and a Celery worker, writes
an event with S seats and U users (tokens minted directly), then C clients send N booking
requests to each design in turn and follow every booking to its decision (``Prefer: wait``, and a
waiting GET if that runs out). K WebSocket subscribers watch the event during the queued run.
A drain benchmark follows: a backlog of pending bookings decided by the worker alone, beside the
single-booking procedure called in a loop. At the end: a table, a JSON file and a PNG plot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import floor, report
from bench.cpu import CpuMeter
from bench.load import Outcome, Subscribers, _percentiles, run_clients
from bench.stack import (
    BENCH_JWT_SECRET,
    Data,
    Stack,
    StackConfig,
    add_target_args,
    check_targets,
    connect,
    prepare_database,
)
from devstack import ROOT

DESIGNS = {"queued": "POST /api/bookings (Prefer: wait)", "sync": "POST /api/bench/bookings-sync"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.flash_sale", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--clients", "-c", type=int, default=200, help="concurrent clients (C)")
    add("--requests", "-n", type=int, default=20_000, help="booking requests per design (N)")
    add("--seats", "-s", type=int, default=5_000, help="seats of the event (S)")
    add("--users", "-u", type=int, default=None, help="users (U); default N, one request each")
    add("--max-per-user", type=int, default=10, help="the event's maxSeatsPerUser")
    add("--ws-subscribers", "-k", type=int, default=10, help="WebSocket subscribers (K)")
    add("--designs", default="queued,sync", help="which designs to run, in this order")
    add("--drain-backlog", type=int, default=20_000, help="pending bookings to drain; 0 skips")
    add("--drain-seats", type=int, default=None, help="seats of the drain event; default S")
    add("--wait", type=int, default=30, help="Prefer: wait=N seconds")
    add("--warmup", type=int, default=1000, help="unmeasured requests before each design")
    add("--api-workers", type=int, default=2, help="uvicorn worker processes, both designs")
    add("--worker-concurrency", type=int, default=1, help="Celery worker processes")
    add("--worker-nice", type=int, default=0, help="run the Celery worker under nice -n N")
    add("--pool-size", type=int, default=None, help="DB_POOL_SIZE for the API (default: settings)")
    add("--batch-size", type=int, default=None, help="BATCH_SIZE for the worker")
    add_target_args(parser)
    add("--no-worker", action="store_true", help="a Celery worker on that Redis db is running")
    add("--out", type=Path, default=ROOT / "bench" / "results", help="JSON, PNG and logs")
    add("--profile", type=Path, default=None, help="py-spy the API and worker into this dir")
    add("--no-floor", action="store_true", help="skip the HTTP floor (a trivial route)")
    add("--env", action="append", default=[], metavar="NAME=VALUE",
        help="a setting for the API and worker, e.g. LEAN_PATH=false (repeatable)")  # fmt: skip
    add("--no-plot", action="store_true")
    add("--no-progress", action="store_true")
    return parser.parse_args(argv)


def machine() -> dict[str, Any]:
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "memoryGiB": memory,
        "python": sys.version.split()[0],
        "loadAverage": [round(x, 2) for x in os.getloadavg()],
    }


def _progress(total: int, label: str, disabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="req", disable=disabled, file=sys.stderr)


def summarise(
    design: str,
    outcomes: list[Outcome],
    started: float,
    state: dict[str, Any],
    accepted_times: list[float],
) -> dict[str, Any]:
    """Every figure of one design's run, from what the clients saw and what the database holds."""
    decided = [o for o in outcomes if o.decided is not None]
    by_status: dict[str, int] = {}
    for outcome in outcomes:
        for code in outcome.statuses or [0]:
            by_status[str(code)] = by_status.get(str(code), 0) + 1
    last_decision = max((o.decided for o in decided), default=None)  # type: ignore[type-var]
    wall = (last_decision - started) if last_decision else None
    last_accepted = max(accepted_times, default=None)
    intake_wall = (last_accepted - started) if last_accepted else None
    confirmed_http = sum(1 for o in outcomes if o.final == "confirmed")
    pending_db = state["byStatus"].get("pending", 0)
    undecided_http = sum(1 for o in outcomes if o.final == "pending")
    return {
        "design": design,
        "endpoint": DESIGNS[design],
        "requests": len(outcomes),
        "intakePerSecond": round(len(accepted_times) / intake_wall, 1) if intake_wall else None,
        "decisionsPerSecond": round(len(decided) / wall, 1) if wall else None,
        "wallToLastDecisionSeconds": round(wall, 3) if wall else None,
        "latencyMs": _percentiles([(o.decided - o.sent) * 1000 for o in decided]),  # type: ignore[operator]
        "httpStatus": dict(sorted(by_status.items())),
        "outcomes": {
            "confirmed": confirmed_http,
            "rejected": sum(1 for o in outcomes if o.final == "rejected"),
            "undecided": undecided_http,
            "errors": sum(1 for o in outcomes if o.final == "error"),
        },
        "fiveXX": sum(n for code, n in by_status.items() if code.startswith("5")),
        "capacity": state["capacity"],
        "confirmedSeats": state["confirmedSeats"],
        "availableSeats": state["availableSeats"],
        "oversell": max(0, state["confirmedSeats"] - state["capacity"])
        + state["invariantViolations"],
        # Accepted but never decided: still pending in the database, or a client that gave up.
        "lost": max(pending_db, undecided_http),
        "confirmedMatchesDatabase": confirmed_http == state["confirmedSeats"],
        "database": state,
        "timeline": {
            "start": started,
            "accepted": [round(t - started, 4) for t in sorted(accepted_times)],
            "decided": [round(o.decided - started, 4) for o in sorted(decided, key=_decided_at)],  # type: ignore[operator]
            "confirmed": [
                round(o.decided - started, 4)  # type: ignore[operator]
                for o in sorted(decided, key=_decided_at)
                if o.final == "confirmed"
            ],
        },
    }


def _decided_at(outcome: Outcome) -> float:
    return outcome.decided or 0.0


async def run_design(
    design: str, stack: Stack, data: Data, tokens: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    if args.warmup:
        # Not measured: fills the API's connection pools and threads and the worker's caches,
        # so neither design pays the cold start the other one does not.
        warm_event = data.create_event(args.warmup, args.max_per_user, f"Warm-up ({design})")
        await run_clients(
            stack.url,
            tokens[-args.warmup :],
            warm_event,
            requests=args.warmup,
            clients=min(args.clients, args.warmup),
            wait=args.wait,
            sync=design == "sync",
            progress=_progress(0, "warm-up", True),
        )
    event_id = data.create_event(args.seats, args.max_per_user, f"Flash sale ({design})")
    subscribers = Subscribers(
        stack.ws_url, event_id, tokens, args.ws_subscribers if design == "queued" else 0
    )
    await subscribers.start()
    progress = _progress(args.requests, design, args.no_progress)
    started = time.time()
    with CpuMeter(stack, data, args.database_url) as cpu:

        def split_at_sell_out(outcome: Outcome) -> None:
            # The first refusal ends the sale's first phase: from here on, mostly refusals.
            if outcome.reason == "sold_out" and not cpu.marks:
                cpu.mark()

        outcomes = await run_clients(
            stack.url,
            tokens,
            event_id,
            requests=args.requests,
            clients=args.clients,
            wait=args.wait,
            sync=design == "sync",
            progress=progress,
            on_outcome=split_at_sell_out,
        )
    progress.close()
    # A request still undecided here is waited for by its own client; give the queue a moment.
    state = data.event_state(event_id)
    if design == "queued":
        created = data.created_times(event_id)
        accepted = list(created.values())
    else:
        created = {}
        accepted = [o.decided for o in outcomes if o.decided is not None]
    result = summarise(design, outcomes, started, state, accepted)
    if created:
        # Where a queued request's time goes: reaching the commit, then waiting for the worker.
        split = [
            (created[o.booking_id], o) for o in outcomes if o.decided and o.booking_id in created
        ]
        result["intakeLatencyMs"] = _percentiles([(c - o.sent) * 1000 for c, o in split])
        result["queueLatencyMs"] = _percentiles([(o.decided - c) * 1000 for c, o in split])  # type: ignore[operator]
    result["cpuSeconds"] = cpu.seconds
    server = sum(v for k, v in cpu.seconds.items() if k != "client")
    result["serverCpuMsPerRequest"] = round(1000 * server / max(1, len(outcomes)), 3)
    result["apiCpuMsPerRequest"] = round(1000 * cpu.seconds["api"] / max(1, len(outcomes)), 3)
    result["cpuPhases"] = cpu.report([o.sent for o in outcomes])
    last = max((o.decided for o in outcomes if o.decided and o.final == "confirmed"), default=None)
    if design == "queued":
        await subscribers.settle(state["version"])
        result["websocket"] = subscribers.report(state["availableSeats"], state["version"], last)
        result["websocketSeries"] = [
            (round(t - started, 4), m.get("availableSeats"))
            for t, m in (subscribers.subscribers[0].messages if subscribers.subscribers else [])
            if "availableSeats" in m
        ]
    else:
        result["websocket"] = {"available": False, "reason": "the synchronous design pushes none"}
    await subscribers.stop()
    return result


def drain_benchmark(
    stack: Stack, data: Data, users: list[int], args: argparse.Namespace
) -> dict[str, Any]:
    """The same backlog decided two ways on the same database: the worker's batches, and
    ``bench.create_booking`` (bench/create_booking.sql) called once per booking, one
    transaction each, by one client (the single-booking design's best case: more clients only
    queue on the event row lock)."""
    from celery import Celery

    from common.tasks import BOOKINGS_QUEUE, PROCESS_EVENT

    backlog = args.drain_backlog
    seats = args.drain_seats or args.seats
    event_id = data.create_event(seats, args.max_per_user, "Drain (worker)")
    data.sql(
        "INSERT INTO bookings (booking_id, user_id, event_id, quantity, status, created_at) "
        "SELECT 'bk_drain_' || %s || '_' || g, (%s::int[])[1 + (g - 1) %% %s], %s, 1,"
        " 'pending', now() FROM generate_series(1, %s) g",
        (event_id, users, len(users), event_id, backlog),
    )
    data.vacuum()
    sender = Celery("bench-drain", set_as_current=False)
    sender.config_from_object("celeryconfig")
    sender.conf.broker_url = args.redis_url
    started = time.perf_counter()
    sender.send_task(PROCESS_EVENT, args=[event_id], queue=BOOKINGS_QUEUE)
    deadline = started + 600
    while time.perf_counter() < deadline:
        # Stops at the first pending row it finds: polling costs the database next to nothing.
        left = data.sql(
            "SELECT EXISTS (SELECT 1 FROM bookings WHERE event_id = %s AND status = 'pending')",
            (event_id,),
        )[0][0]
        if not left:
            break
        time.sleep(0.01)
    worker_seconds = time.perf_counter() - started
    worker_state = data.event_state(event_id)
    sender.close()

    loop_event = data.create_event(seats, args.max_per_user, "Drain (single-booking loop)")
    conn = connect(args.database_url)
    started = time.perf_counter()
    with conn.cursor() as cur:
        for i in range(backlog):
            cur.execute(
                "SELECT bench.create_booking(%s, %s, %s, 1)",
                (users[i % len(users)], loop_event, f"bk_loop_{loop_event}_{i}"),
            )
            conn.commit()
    loop_seconds = time.perf_counter() - started
    conn.close()
    loop_state = data.event_state(loop_event)
    worker_rate = backlog / worker_seconds
    loop_rate = backlog / loop_seconds
    return {
        "backlog": backlog,
        "seats": seats,
        "worker": {
            "seconds": round(worker_seconds, 3),
            "perSecond": round(worker_rate, 1),
            "left": worker_state["byStatus"].get("pending", 0),
            "confirmedSeats": worker_state["confirmedSeats"],
            "invariantViolations": worker_state["invariantViolations"],
        },
        "singleBookingLoop": {
            "seconds": round(loop_seconds, 3),
            "perSecond": round(loop_rate, 1),
            "confirmedSeats": loop_state["confirmedSeats"],
            "invariantViolations": loop_state["invariantViolations"],
        },
        "ratio": round(worker_rate / loop_rate, 2),
    }


def mint_tokens(users: list[int]) -> list[str]:
    """Signed with the secret the benchmark's API runs with; no login, no bcrypt."""
    from common.security import create_access_token
    from common.settings import Settings

    settings = Settings(_env_file=None, JWT_SECRET=BENCH_JWT_SECRET)
    return [create_access_token(user_id, "user", settings) for user_id in users]


def _stop_spies(spies: list[Any]) -> None:
    for spy in spies:
        if spy.poll() is None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            spy.wait(30)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    check_targets(args.database_url, args.redis_url, args.reuse_database)
    designs = [d.strip() for d in args.designs.split(",") if d.strip()]
    unknown = set(designs) - set(DESIGNS)
    if unknown:
        raise SystemExit(f"unknown design(s): {', '.join(sorted(unknown))}")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    config = StackConfig(
        database_url=args.database_url,
        redis_url=args.redis_url,
        api_workers=args.api_workers,
        worker_concurrency=args.worker_concurrency,
        pool_size=args.pool_size,
        batch_size=args.batch_size,
        start_worker=not args.no_worker,
        worker_nice=args.worker_nice,
        reuse_database=args.reuse_database,
        log_dir=args.out / f"logs-{stamp}",
        extra_env=dict(item.split("=", 1) for item in args.env),
    )
    print(f"preparing {args.database_url} and {args.redis_url}", file=sys.stderr)
    prepare_database(args.database_url, args.reuse_database)
    data = Data(args.database_url)
    users = data.create_users(args.users or args.requests)
    tokens = mint_tokens(users)
    data.vacuum()
    before = machine()
    stack = Stack(config).start()
    results: dict[str, Any] = {}
    spies = []
    try:
        for design in designs:
            data.vacuum()
            if args.profile:
                spies = stack.profile(args.profile / design)
            results[design] = await run_design(design, stack, data, tokens, args)
            _stop_spies(spies)
        if not args.no_floor:
            # The same uvicorn and client on a trivial route: the ceiling of any design.
            http_floor = await floor.measure(
                config.env(), config.log_dir, args.api_workers, tokens, args.requests,
                args.clients,
            )  # fmt: skip
        else:
            http_floor = None
        if args.drain_backlog > 0:
            if args.profile:
                spies = stack.profile(args.profile / "drain")
            drain = drain_benchmark(stack, data, users, args)
            _stop_spies(spies)
        else:
            drain = None
    finally:
        _stop_spies(spies)
        stack.stop()
        data.close()
    summary = {
        "generatedAt": stamp,
        "command": "python -m bench.flash_sale " + " ".join(sys.argv[1:]),
        "config": {
            "clients": args.clients,
            "requests": args.requests,
            "seats": args.seats,
            "users": args.users or args.requests,
            "wsSubscribers": args.ws_subscribers,
            "apiWorkers": args.api_workers,
            "workerConcurrency": args.worker_concurrency,
            "poolSize": args.pool_size,
            "batchSize": args.batch_size,
            "wait": args.wait,
            "warmup": args.warmup,
            "env": args.env,
        },
        "machine": {**before, "loadAverageAfter": [round(x, 2) for x in os.getloadavg()]},
        "designs": results,
        "httpFloor": http_floor,
        "drain": drain,
    }
    summary["ratios"] = report.ratios(summary)
    json_path = args.out / f"flash-sale-{stamp}.json"
    json_path.write_text(json.dumps(summary, indent=2))
    files = summary["files"] = {"json": str(json_path)}
    if not args.no_plot:
        png_path = args.out / f"flash-sale-{stamp}.png"
        report.plot(summary, png_path)
        files["png"] = str(png_path)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = asyncio.run(main_async(args))
    print(report.table(summary))
    for kind, path in summary["files"].items():
        print(f"{kind}: {path}")
    return 0 if report.correct(summary) else 1


if __name__ == "__main__":
    sys.exit(main())
