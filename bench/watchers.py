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
    add("--storm", type=int, default=0, help="then open this many sockets at once (0: none)")
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
        self.snapshot_at: float | None = None  # when its first snapshot arrived
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
        if message.get("type") == "subscribed":
            if self.snapshot_at is None:
                self.snapshot_at = now
        else:
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


async def _watch(
    url: str, tokens: list[str], commands: Any, results: Any, burst: bool = False
) -> None:
    """Open a socket per token (paced, or all at once: ``burst``, a reconnect storm), report
    when all have their snapshot, then follow the sale until told its final version."""
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    group = WatcherGroup()
    key = base64.b64encode(os.urandom(16)).decode()
    first_at = time.time()
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
        if i % 200 == 199 and not burst:
            await asyncio.sleep(0.05)  # a steady stream of opens, not one burst
    while any(w.snapshot_at is None and not w.closed for w in group.watchers):
        await asyncio.sleep(0.01)
    snapshots = [w.snapshot_at for w in group.watchers if w.snapshot_at is not None]
    results.put(("open", group.opened, first_at, max(snapshots, default=None), len(snapshots)))
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


def _watcher_main(
    url: str, tokens: list[str], commands: Any, results: Any, burst: bool = False
) -> None:
    asyncio.run(_watch(url, tokens, commands, results, burst))


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


def open_watchers(
    args: argparse.Namespace, url: str, tokens: list[str], burst: bool = False
) -> tuple[list[Any], list[Any], Any, dict[str, Any]]:
    """Start the watcher processes, one socket per token, and wait until every socket has its
    snapshot: (processes, their command queues, the results queue, how the opening went)."""
    context = mp.get_context("spawn")
    procs, commands, results = [], [], context.Queue()
    for i in range(args.client_procs):
        toks = tokens[i :: args.client_procs]
        if not toks:
            continue
        queue = context.Queue()
        proc = context.Process(
            target=_watcher_main, args=(url, toks, queue, results, burst), daemon=True
        )
        proc.start()
        procs.append(proc)
        commands.append(queue)
    opened = [results.get(timeout=300) for _ in procs]
    firsts = [o[2] for o in opened]
    lasts = [o[3] for o in opened if o[3] is not None]
    return (
        procs,
        commands,
        results,
        {
            "opened": sum(o[1] for o in opened),
            "snapshots": sum(o[4] for o in opened),
            # From the first connect of any process to the last socket's snapshot.
            "allSnapshotsSeconds": round(max(lasts) - min(firsts), 3) if lasts else None,
        },
    )


def _per_open(cpu: CpuMeter, opened: int) -> dict[str, Any]:
    seconds = cpu.seconds
    return {
        "wsUsPerOpen": round(1e6 * seconds.get("ws", 0.0) / opened, 1) if opened else None,
        "postgresUsPerOpen": round(1e6 * seconds.get("postgres", 0.0) / opened, 1)
        if opened
        else None,
    }


def run_round(
    args: argparse.Namespace,
    stack: Stack,
    ws: ApiProcess,
    data: Data,
    count: int,
    watched_first: bool,
) -> dict[str, Any]:
    users = data.create_users(args.users)
    tokens = mint_tokens(users)
    result: dict[str, Any] = {"watchers": count, "watchedFirst": watched_first}

    def unwatched() -> None:
        unwatched_event = data.create_event(args.seats, 1, "Unwatched twin")
        data.vacuum()
        with CpuMeter(stack, data, args.database_url) as cpu:
            result["unwatched"] = asyncio.run(one_sale(args, stack, data, tokens, unwatched_event))
        result["unwatchedCpu"] = cpu.seconds

    if not watched_first:
        unwatched()
    event_id = data.create_event(args.seats, 1, f"Watched by {count}")
    data.vacuum()
    watcher_tokens = mint_tokens(data.create_users(max(1, count // 10)))
    url = f"{ws.ws_url}/ws/events/{event_id}"
    toks = [watcher_tokens[i // 10 % len(watcher_tokens)] for i in range(count)]
    # The server's cost of opening them (token, user, snapshot, handshake) counts too.
    with CpuMeter(stack, data, args.database_url) as open_cpu:
        procs, commands, results, opening = open_watchers(args, url, toks)
    result["opening"] = opening | _per_open(open_cpu, opening["opened"])
    result["opened"] = opening["opened"]
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
    if watched_first:
        time.sleep(1.0)
        unwatched()
    messages = sum(d[2] for d in done)
    lags = [x * 1000 for d in done for x in d[4]]
    finals = [f for d in done for f in d[5]]
    final_seats = result["watched"]["state"]["availableSeats"]
    unwatched_sale, watched = result["unwatched"], result["watched"]
    ws_cpu = cpu.seconds.get("ws", 0.0)
    api_cpu = cpu.seconds.get("api", 0.0)
    result["summary"] = {
        "watchedFirst": watched_first,
        "decisionsRatio": round(
            watched["decisionsPerSecond"] / unwatched_sale["decisionsPerSecond"], 3
        )
        if unwatched_sale["decisionsPerSecond"] and watched["decisionsPerSecond"]
        else None,
        "unwatchedDecisionsPerSecond": unwatched_sale["decisionsPerSecond"],
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
        "opening": result["opening"],
    }
    return result


def storm(args: argparse.Namespace, stack: Stack, ws: ApiProcess, data: Data) -> dict[str, Any]:
    """``--storm`` sockets opened at once, as the clients of a dead instance all coming back
    (users new to the ws process, 10 sockets each): how long until every one has a snapshot,
    and the server's CPU per socket."""
    event_id = data.create_event(args.seats, 1, "Storm")
    tokens = mint_tokens(data.create_users(max(1, args.storm // 10)))
    toks = [tokens[i // 10 % len(tokens)] for i in range(args.storm)]
    with CpuMeter(stack, data, args.database_url) as cpu:
        procs, commands, results, opening = open_watchers(
            args, f"{ws.ws_url}/ws/events/{event_id}", toks, burst=True
        )
    for queue in commands:
        queue.put(-1)
    for _ in procs:
        results.get(timeout=120)
    for proc in procs:
        proc.join(10)
    return {"sockets": args.storm, **opening, **_per_open(cpu, opening["opened"])}


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
        counts = [int(x) for x in args.watchers.split(",") if x.strip()]
        for index, count in enumerate(counts):
            # Alternate which sale runs first, so the one second is not always the watched one.
            rounds.append(run_round(args, stack, ws, data, count, watched_first=index % 2 == 1))
            print(json.dumps({"watchers": count, **rounds[-1]["summary"]}), flush=True)
        if args.storm:
            report["storm"] = storm(args, stack, ws, data)
            print(json.dumps({"storm": report["storm"]}), flush=True)
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
