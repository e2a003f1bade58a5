"""The cost of watching: a flash sale with and without 50 open organiser dashboards, one run.

    python -m bench.dashboards --dashboards 50 --pairs 2      (make bench BENCH=dashboards)

One stack (uvicorn, a Celery worker, its own database and Redis db). The same flash sale runs
2 x ``--pairs`` times on fresh events, in the order without, with, with, without, ... so drift on
a busy machine falls on both sides alike. "With": D dashboard clients, in a process of their own
(the load generator's CPU is not theirs), each opened as /dashboard opens: ``GET /api/dashboard``
focused on the sale (the snapshot), then one socket subscribed to every event of the page and
the sale; the sale starts once all are open, and they read everything until it ends. Figures:
decisions per second (bench.flash_sale's definition) per run, and with/without per pair.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.cpu import CpuMeter, cpu_seconds
from bench.flash_sale import mint_tokens, summarise
from bench.load import run_clients
from bench.stack import (
    BENCH_JWT_SECRET,
    Data,
    Stack,
    StackConfig,
    add_target_args,
    check_targets,
    prepare_database,
)
from devstack import ROOT


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.dashboards", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--dashboards", "-d", type=int, default=50, help="open dashboards (D)")
    add("--pairs", type=int, default=2, help="pairs of runs (without, with)")
    add("--clients", "-c", type=int, default=100, help="concurrent buyers")
    add("--requests", "-n", type=int, default=6000, help="booking requests per run")
    add("--seats", "-s", type=int, default=3000, help="seats of each sale")
    add("--other-events", type=int, default=500, help="events besides the sales (the list)")
    add("--wait", type=int, default=30, help="Prefer: wait=N seconds")
    add("--warmup", type=int, default=1000, help="unmeasured requests first")
    add("--api-workers", type=int, default=2)
    add("--watcher-nice", type=int, default=0, help="run the dashboards' process under nice N")
    add_target_args(parser)
    add("--out", type=Path, default=ROOT / "bench" / "results")
    return parser.parse_args(argv)


def admin_tokens(data: Data, count: int) -> list[str]:
    """One admin per dashboard: a user may hold only WS_MAX_PER_USER sockets per instance."""
    from common.security import create_access_token
    from common.settings import Settings

    users = data.create_users(count)
    data.sql("UPDATE users SET role = 'admin' WHERE id = ANY(%s)", (users,))
    settings = Settings(_env_file=None, JWT_SECRET=BENCH_JWT_SECRET)
    return [create_access_token(user_id, "admin", settings) for user_id in users]


async def _dashboard(
    url: str, ws_url: str, token: str, event_id: int, stop: Any, tally: dict
) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{url}/api/dashboard",
            params={"focus": event_id, "limit": 10},
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            body = await response.json()
            tally["snapshots"] += response.status == 200
        ids = {e["id"] for e in body["data"]["events"]} | {event_id}
        async with session.ws_connect(f"{ws_url}/ws") as ws:
            await ws.send_json({"type": "auth", "token": token})
            for id_ in ids:
                await ws.send_json({"type": "subscribe_event", "eventId": id_})
            tally["open"] += 1
            while not stop.is_set():
                try:
                    message = await ws.receive(timeout=0.2)
                except TimeoutError:
                    continue
                if message.type != aiohttp.WSMsgType.TEXT:
                    tally["closed"] += 1
                    return
                payload = json.loads(message.data)
                tally["messages"] += 1
                data = payload.get("data") or {}
                if data.get("eventId") == event_id and "availableSeats" in data:
                    tally["lastSeats"] = data["availableSeats"]


def watch(
    url: str, ws_url: str, tokens: list[str], event_id: int, stop: Any, out: Any, nice: int
) -> None:
    """The dashboards' process: all of them open at once, read until ``stop``."""
    os.nice(nice)
    tally: dict[str, Any] = {"open": 0, "snapshots": 0, "messages": 0, "closed": 0}

    async def ready() -> None:
        while tally["open"] < len(tokens):
            await asyncio.sleep(0.05)
        out.put("ready")

    async def main() -> None:
        await asyncio.gather(
            ready(), *(_dashboard(url, ws_url, t, event_id, stop, tally) for t in tokens)
        )

    asyncio.run(main())
    out.put(tally)


async def one_sale(
    stack: Stack, data: Data, buyers: list[str], admins: list[str], label: str, args: Any
) -> dict[str, Any]:
    event_id = data.create_event(args.seats, 10, f"Flash sale ({label})")
    data.vacuum()
    context = multiprocessing.get_context("spawn")
    stop, out = context.Event(), context.Queue()
    watcher = None
    if admins:
        watcher = context.Process(
            target=watch,
            args=(stack.url, stack.ws_url, admins, event_id, stop, out, args.watcher_nice),
        )
        watcher.start()
        # Measured: a sale with the dashboards open, not the dashboards' process starting.
        assert out.get(timeout=120) == "ready"
        time.sleep(1)
    watcher_cpu = cpu_seconds(watcher.pid) if watcher and watcher.pid else None
    started = time.time()
    with CpuMeter(stack, data, args.database_url) as cpu:
        outcomes = await run_clients(
            stack.url,
            buyers,
            event_id,
            requests=args.requests,
            clients=args.clients,
            wait=args.wait,
            sync=False,
            progress=_quiet(),
        )
    spent = cpu.seconds
    if watcher is not None and watcher.pid and watcher_cpu is not None:
        # What the dashboards' own reading cost during the sale: client CPU, not the server's.
        spent["dashboards"] = round((cpu_seconds(watcher.pid) or 0) - watcher_cpu, 3)
    state = data.event_state(event_id)
    result = summarise(
        "queued", outcomes, started, state, list(data.created_times(event_id).values())
    )
    result.pop("timeline")
    result["cpuSeconds"] = spent
    if watcher is not None:
        time.sleep(1)  # the last seat message reaches the dashboards
        stop.set()
        result["dashboards"] = out.get(timeout=60)
        watcher.join(30)
    result["label"] = label
    return result


class _quiet:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    check_targets(args.database_url, args.redis_url, args.reuse_database)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    config = StackConfig(
        database_url=args.database_url,
        redis_url=args.redis_url,
        api_workers=args.api_workers,
        worker_concurrency=1,
        pool_size=None,
        batch_size=None,
        start_worker=True,
        worker_nice=0,
        reuse_database=args.reuse_database,
        log_dir=args.out / f"logs-dashboards-{stamp}",
        extra_env={},
    )
    prepare_database(args.database_url, args.reuse_database)
    data = Data(args.database_url)
    buyers = mint_tokens(data.create_users(args.requests))
    admins = admin_tokens(data, args.dashboards)
    for n in range(args.other_events):
        data.create_event(100, 10, f"Other event {n}")
    stack = Stack(config).start()
    runs = []
    try:
        warm = data.create_event(args.warmup, 10, "Warm-up")
        await run_clients(stack.url, buyers[-args.warmup:], warm, requests=args.warmup,
                          clients=min(args.clients, args.warmup), wait=args.wait, sync=False,
                          progress=_quiet())  # fmt: skip
        order: list[str] = []
        for _ in range(args.pairs):
            order += ["without", "with"] if len(order) % 4 == 0 else ["with", "without"]
        for i, label in enumerate(order):
            watchers = admins if label == "with" else []
            print(f"run {i + 1}/{len(order)}: {label} dashboards", file=sys.stderr)
            runs.append(await one_sale(stack, data, buyers, watchers, label, args))
    finally:
        stack.stop()
        data.close()
    pairs = []
    for i in range(0, len(runs), 2):
        a, b = runs[i], runs[i + 1]
        with_, without = (a, b) if a["label"] == "with" else (b, a)
        pairs.append(round(with_["decisionsPerSecond"] / without["decisionsPerSecond"], 3))
    total = {label: sum(r["decisionsPerSecond"] for r in runs if r["label"] == label)
             for label in ("with", "without")}  # fmt: skip
    summary = {
        "generatedAt": stamp,
        "command": "python -m bench.dashboards " + " ".join(sys.argv[1:]),
        "config": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "runs": runs,
        "withOverWithoutPerPair": pairs,
        "withOverWithout": round(total["with"] / total["without"], 3),
    }
    path = args.out / f"dashboards-{stamp}.json"
    path.write_text(json.dumps(summary, indent=2, default=str))
    summary["file"] = str(path)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = asyncio.run(main_async(args))
    for run in summary["runs"]:
        dash = run.get("dashboards") or {}
        print(
            f"{run['label']:>8}: {run['decisionsPerSecond']:>8} decisions/s, "
            f"p50 {run['latencyMs'].get('p50')} ms, oversell {run['oversell']}, lost {run['lost']}"
            + (f", dashboards: {dash}" if dash else "")
        )
        print(f"          CPU seconds: {run['cpuSeconds']}")
    print(f"with/without per pair: {summary['withOverWithoutPerPair']}")
    print(f"with/without overall: {summary['withOverWithout']}")
    print(f"json: {summary['file']}")
    bad = any(r["oversell"] or r["lost"] for r in summary["runs"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
