"""Watchers benchmark: the flash sale with thousands of sockets watching its seat counter.

    python -m bench.watchers --watchers 0,1000,5000,10000      (make bench BENCH=watchers)

Its own database and Redis db, as bench.flash_sale: two uvicorn processes take the bookings, a
separate uvicorn process serves the WebSockets (the ``ws`` service of docker-compose.yml, which
nginx routes ``/ws`` to), one Celery worker decides. For each watcher count K, an unwatched sale
and then the same sale (C clients, N one-seat requests, S seats, a fresh event) with K sockets
on the event, 10 per user, opened before the sale and split over ``--client-procs`` processes.

Reported per K: the sale's decisions/s against its unwatched twin of the same round; seat
message lag (the worker's ``timestamp`` to receipt) p50/p99; CPU seconds of the ws process, the
API processes and the watchers' own processes, per delivered message; how many watchers ended
on the database's final count. The watchers are minimal raw-socket clients (no library per
frame) so that they take as little as possible of the two cores they share with the system.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.cpu import CpuMeter, cpu_seconds
from bench.flash_sale import _progress, machine, mint_tokens
from bench.load import _percentiles, run_clients
from bench.stack import (
    Data,
    Stack,
    StackConfig,
    add_target_args,
    check_targets,
    prepare_database,
)
from devstack import ROOT, ApiProcess


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.watchers", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--watchers", default="0,1000,5000,10000", help="watcher counts, comma-separated")
    add("--clients", "-c", type=int, default=200, help="concurrent clients of the sale (C)")
    add("--requests", "-n", type=int, default=10_000, help="booking requests (N)")
    add("--seats", "-s", type=int, default=2_500, help="seats of each event (S)")
    add("--users", type=int, default=2_000, help="buyers (request i is user i mod U)")
    add("--wait", type=int, default=30, help="Prefer: wait=N seconds")
    add("--api-workers", type=int, default=2, help="uvicorn processes taking bookings")
    add("--client-procs", type=int, default=4, help="processes the watchers are split over")
    add("--coalesce", type=float, default=None, help="WS_COALESCE_INTERVAL for the ws process")
    add_target_args(parser)
    add("--out", type=Path, default=ROOT / "bench" / "results", help="JSON and logs")
    add("--no-progress", action="store_true")
    return parser.parse_args(argv)


# ------------------------------------------------------------------ the watchers' processes


class Watcher(asyncio.Protocol):
    """One socket, read by hand: server frames are unmasked; only seat messages are decoded."""

    def __init__(self, owner: WatcherGroup, request: bytes) -> None:
        self.owner, self.request = owner, request
        self.buffer = b""
        self.open = False
        self.version = -1
        self.key: tuple[int, int] = (-1, -1)
        self.seats: int | None = None
        self.closed = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        if not self.open:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self.closed = True
                return
            self.open = True
            self.owner.opened += 1
            buffer = buffer[end + 4 :]
        now = time.time()
        while len(buffer) >= 2:
            size, start = buffer[1] & 0x7F, 2
            if size == 126:
                if len(buffer) < 4:
                    break
                size, start = int.from_bytes(buffer[2:4], "big"), 4
            elif size == 127:
                if len(buffer) < 10:
                    break
                size, start = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < start + size:
                break
            opcode = buffer[0] & 0x0F
            payload = buffer[start : start + size]
            buffer = buffer[start + size :]
            if opcode == 1 and b'"availableSeats"' in payload:
                self.seen(now, payload)
        self.buffer = buffer

    def seen(self, now: float, payload: bytes) -> None:
        message = json.loads(payload)
        data = message.get("data") or {}
        version = data.get("version")
        if not isinstance(version, int):
            return
        line = data.get("line") or {}
        key = (version, line.get("through", -1) + len(line.get("gone", ())))
        if key <= self.key:  # docs/websockets.md: ordered by version, then the line
            self.owner.backwards += 1
        self.key, self.version, self.seats = key, version, data.get("availableSeats")
        if message.get("type") != "subscribed":
            stamp = data.get("timestamp")
            if isinstance(stamp, str):
                self.owner.lags.append(now - datetime.fromisoformat(stamp).timestamp())
            self.owner.messages += 1


class WatcherGroup:
    def __init__(self) -> None:
        self.opened = 0
        self.messages = 0
        self.backwards = 0
        self.lags: list[float] = []
        self.watchers: list[Watcher] = []


async def _watch(url: str, tokens: list[str], commands: Any, results: Any) -> None:
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    group = WatcherGroup()
    key = base64.b64encode(os.urandom(16)).decode()
    for i, token in enumerate(tokens):
        request = (
            f"GET {parts.path}?token={token} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        watcher = Watcher(group, request)
        await loop.create_connection(
            partial(_same, watcher), parts.hostname or "127.0.0.1", parts.port or 80
        )
        group.watchers.append(watcher)
        if i % 200 == 199:
            await asyncio.sleep(0.05)  # a steady stream of opens, not one burst
    while group.opened < len(tokens) and not any(w.closed for w in group.watchers):
        await asyncio.sleep(0.05)
    results.put(("open", group.opened))
    started_cpu = _own_cpu()
    final_version = await loop.run_in_executor(None, commands.get)  # the sale is over
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
        w.version < final_version and not w.closed for w in group.watchers
    ):
        await asyncio.sleep(0.05)
    cpu = _own_cpu() - started_cpu
    finals = [(w.version, w.seats) for w in group.watchers]
    for watcher in group.watchers:
        if watcher.transport is not None:
            watcher.transport.close()
    results.put(("done", cpu, group.messages, group.backwards, group.lags, finals))


def _same(watcher: Watcher) -> Watcher:
    return watcher


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _watcher_main(url: str, tokens: list[str], commands: Any, results: Any) -> None:
    asyncio.run(_watch(url, tokens, commands, results))


# ------------------------------------------------------------------ the rounds


def raise_fd_limit() -> int:
    """Each watcher is a file descriptor in the ws process and in a watcher process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def one_sale(
    args: argparse.Namespace, stack: Stack, data: Data, tokens: list[str], event_id: int
) -> dict[str, Any]:
    started = time.time()
    outcomes = await run_clients(
        stack.url,
        tokens,
        event_id,
        requests=args.requests,
        clients=args.clients,
        wait=args.wait,
        sync=False,
        progress=_progress(args.requests, f"event {event_id}", args.no_progress),
    )
    decided = [o.decided for o in outcomes if o.decided is not None]
    wall = max(decided) - started if decided else None
    state = data.event_state(event_id)
    return {
        "decisionsPerSecond": round(len(decided) / wall, 1) if wall else None,
        "decided": len(decided),
        "errors": sum(1 for o in outcomes if o.final == "error"),
        "fiveXX": sum(1 for o in outcomes for s in o.statuses if s >= 500),
        "state": state,
    }


def run_round(
    args: argparse.Namespace, stack: Stack, ws: ApiProcess, data: Data, count: int
) -> dict[str, Any]:
    users = data.create_users(args.users)
    tokens = mint_tokens(users)
    unwatched_event = data.create_event(args.seats, 1, "Unwatched twin")
    data.vacuum()
    result: dict[str, Any] = {"watchers": count}
    with CpuMeter(stack, data, args.database_url) as cpu:
        result["unwatched"] = asyncio.run(one_sale(args, stack, data, tokens, unwatched_event))
    result["unwatchedCpu"] = cpu.seconds

    event_id = data.create_event(args.seats, 1, f"Watched by {count}")
    watcher_tokens = mint_tokens(data.create_users(max(1, count // 10)))
    procs, commands, results = [], [], mp.get_context("spawn").Queue()
    per = [list(range(i, count, args.client_procs)) for i in range(args.client_procs)]
    url = f"{ws.ws_url}/ws/events/{event_id}"
    for indexes in per:
        if not indexes:
            continue
        queue = mp.get_context("spawn").Queue()
        toks = [watcher_tokens[i // 10 % len(watcher_tokens)] for i in indexes]
        proc = mp.get_context("spawn").Process(
            target=_watcher_main, args=(url, toks, queue, results), daemon=True
        )
        proc.start()
        procs.append(proc)
        commands.append(queue)
    opened = sum(results.get(timeout=300)[1] for _ in procs)
    result["opened"] = opened
    time.sleep(1.0)
    client_pids = [p.pid for p in procs if p.pid is not None]
    client_before = sum(cpu_seconds(pid) or 0.0 for pid in client_pids)
    with CpuMeter(stack, data, args.database_url) as cpu:
        result["watched"] = asyncio.run(one_sale(args, stack, data, tokens, event_id))
        final_version = result["watched"]["state"]["version"]
        for queue in commands:
            queue.put(final_version)
        done = [results.get(timeout=120) for _ in procs]
    client_cpu = sum(cpu_seconds(pid) or 0.0 for pid in client_pids) - client_before
    for proc in procs:
        proc.join(10)
    result["watchedCpu"] = cpu.seconds
    messages = sum(d[2] for d in done)
    lags = [x * 1000 for d in done for x in d[4]]
    finals = [f for d in done for f in d[5]]
    final_seats = result["watched"]["state"]["availableSeats"]
    unwatched, watched = result["unwatched"], result["watched"]
    ws_cpu = cpu.seconds.get("ws", 0.0)
    api_cpu = cpu.seconds.get("api", 0.0)
    result["summary"] = {
        "decisionsRatio": round(watched["decisionsPerSecond"] / unwatched["decisionsPerSecond"], 3)
        if unwatched["decisionsPerSecond"] and watched["decisionsPerSecond"]
        else None,
        "unwatchedDecisionsPerSecond": unwatched["decisionsPerSecond"],
        "watchedDecisionsPerSecond": watched["decisionsPerSecond"],
        "delivered": messages,
        "lagMs": _percentiles(lags),
        "wsCpuSeconds": ws_cpu,
        "apiCpuSecondsWatched": api_cpu,
        "apiCpuSecondsUnwatched": result["unwatchedCpu"].get("api"),
        "wsUsPerDelivered": round(1e6 * ws_cpu / messages, 2) if messages else None,
        "apiUsPerDelivered": round(
            1e6 * max(0.0, api_cpu - result["unwatchedCpu"].get("api", 0.0)) / messages, 2
        )
        if messages
        else None,
        "clientCpuSeconds": round(client_cpu, 2),
        "clientUsPerDelivered": round(1e6 * client_cpu / messages, 2) if messages else None,
        "onFinalCount": sum(1 for v, s in finals if v == final_version and s == final_seats),
        "backwards": sum(d[3] for d in done),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_targets(args.database_url, args.redis_url, args.reuse_database)
    limit = raise_fd_limit()
    prepare_database(args.database_url, args.reuse_database)
    log_dir = args.out / "watchers-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    extra = {"WS_MAX_PER_USER": "10"}
    if args.coalesce is not None:
        extra["WS_COALESCE_INTERVAL"] = str(args.coalesce)
    config = StackConfig(
        database_url=args.database_url,
        redis_url=args.redis_url,
        api_workers=args.api_workers,
        worker_concurrency=1,
        pool_size=None,
        batch_size=None,
        start_worker=True,
        reuse_database=args.reuse_database,
        log_dir=log_dir,
        extra_env=extra,
    )
    stack = Stack(config).start()
    ws = ApiProcess("ws", log_dir, stack.api.env, workers=1, access_log=False).start()
    stack.processes.append(ws)
    data = Data(args.database_url)
    report: dict[str, Any] = {"machine": machine(), "args": vars(args) | {"out": str(args.out)}}
    report["fdLimit"] = limit
    rounds = []
    try:
        for count in [int(x) for x in args.watchers.split(",") if x.strip()]:
            rounds.append(run_round(args, stack, ws, data, count))
            print(json.dumps({"watchers": count, **rounds[-1]["summary"]}), flush=True)
    finally:
        stack.stop()
        data.close()
    report["rounds"] = rounds
    out = args.out / f"watchers-{int(time.time())}.json"
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"written {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
