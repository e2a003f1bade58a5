"""Holds benchmark: how late holds expire, and what holds cost a flash sale.

    python -m bench.holds                      (make bench BENCH=holds)

Its own database and Redis db, uvicorn and Celery worker, as bench.flash_sale.

1. Lateness of expiry. One event of H seats with holds and its waitlist on; H + W one-seat
   requests (one user each) are written as ``pending`` rows and decided by the worker, so H
   become ``held`` and W ``waitlisted`` through the real decider. Their ``expiresAt`` is then
   moved into one second, T .. T + 1 s, in groups of ``BATCH_SIZE`` (one end per group, as one
   decided batch shares one end), and each group's timer is sent with ``holds.set_timers``,
   the function the worker calls after a batch that held seats (one timer per bucket of ends).
   Lateness of a hold: from its ``expiresAt`` to the moment the committed batch that expired it
   (its seats back, the waitlist promoted in the same transaction) is heard on the decisions
   channel, i.e. after the commit: an upper bound of the commit's lateness. For the first P
   promoted buyers also to their own WebSocket's ``booking_status`` (``held``, promoted: on an
   event with holds a promotion is a hold in its turn), from the end of
   the hold whose seat they got (one seat each: the i-th promotion of a batch takes the i-th
   expiry's seat).
2. The flash sale with holds on against off: C clients, N requests for S seats (``Prefer:
   wait``), on a fresh event each; pairs alternate which runs first. Per sale: wall time, the
   clients' latency, the server's CPU per request; the ratio on/off per pair.

Checked, exit 1 if not: every hold expired, exactly the W waitlisted promoted and each of the P
told on their socket, no seat invariant violation, every sale settled with S seats taken and
no 5xx.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import redis

from bench.cpu import CpuMeter
from bench.flash_sale import _progress, _stop_spies, machine, mint_tokens
from bench.load import _percentiles, run_clients
from bench.stack import (
    Data,
    Stack,
    StackConfig,
    add_target_args,
    check_targets,
    prepare_database,
)
from bench.waitlist import listen_decisions, open_sockets
from devstack import ROOT

# Long enough that no hold of a sale expires while the bench runs, and within the timer
# horizon the stack runs with, so every batch that holds seats sends its timers as it would.
SALE_HOLD_SECONDS = 1500
TIMER_HORIZON = "1800"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.holds", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--holds", type=int, default=10_000, help="holds expiring in the same second (H)")
    add("--waitlisted", type=int, default=1_000, help="waitlisted behind them (W)")
    add("--sockets", type=int, default=200, help="promoted buyers watched on /ws (P)")
    add("--lead", type=float, default=5.0, help="seconds from setting the timers to T")
    add("--clients", "-c", type=int, default=200, help="concurrent clients of a sale (C)")
    add("--requests", "-n", type=int, default=10_000, help="requests of a sale (N)")
    add("--seats", "-s", type=int, default=2_500, help="seats of a sale's event (S)")
    add("--pairs", type=int, default=2, help="sale pairs (on, off), alternating the first")
    add("--warmup", type=int, default=500, help="requests of an unmeasured sale of each kind")
    add("--skip", choices=["expiry", "sale"], default=None, help="leave one part out")
    add("--wait", type=int, default=30, help="Prefer: wait=N seconds")
    add("--api-workers", type=int, default=2, help="uvicorn worker processes")
    add("--worker-concurrency", type=int, default=1, help="Celery worker processes")
    add("--batch-size", type=int, default=None, help="BATCH_SIZE of the worker")
    add_target_args(parser)
    add("--no-worker", action="store_true", help="a Celery worker on that Redis db is running")
    add("--out", type=Path, default=ROOT / "bench" / "results", help="JSON and logs")
    add("--env", action="append", default=[], metavar="NAME=VALUE",
        help="a setting for the API and worker (repeatable)")  # fmt: skip
    add("--profile", type=Path, default=None, help="py-spy the stack's sales into this folder")
    add("--no-progress", action="store_true")
    return parser.parse_args(argv)


def _sender(redis_url: str) -> Any:
    from celery import Celery

    sender = Celery("bench-holds", set_as_current=False)
    sender.config_from_object("celeryconfig")
    sender.conf.broker_url = redis_url
    return sender


def _wait_for(data: Data, query: str, args: tuple[Any, ...], timeout: float = 600) -> float:
    """Seconds until ``query`` returns false."""
    started = time.monotonic()
    while time.monotonic() - started < timeout and data.sql(query, args)[0][0]:
        time.sleep(0.05)
    return time.monotonic() - started


# ------------------------------------------------------------------ 1. lateness of expiry


async def expiry_lateness(
    args: argparse.Namespace, data: Data, stack: Stack, users: list[int], batch_size: int
) -> dict[str, Any]:
    from common.bookings import holds
    from common.channels import _namespace
    from common.tasks import BOOKINGS_QUEUE, PROCESS_EVENT

    count = args.holds + args.waitlisted
    event_id = data.create_event(args.holds, 1, "Holds expiring at once")
    data.sql(
        "UPDATE events SET waitlist_enabled = true, hold_seconds = %s WHERE id = %s",
        (SALE_HOLD_SECONDS, event_id),
    )
    data.sql(
        "INSERT INTO bookings (booking_id, user_id, event_id, quantity, status, created_at) "
        "SELECT 'bk_hold_' || %s || '_' || g, (%s::int[])[g], %s, 1, 'pending', now()"
        " FROM generate_series(1, %s) g",
        (event_id, users[:count], event_id, count),
    )
    data.vacuum()
    sender = _sender(args.redis_url)
    sender.send_task(PROCESS_EVENT, args=[event_id], queue=BOOKINGS_QUEUE)
    decide_seconds = _wait_for(
        data,
        "SELECT EXISTS (SELECT 1 FROM bookings WHERE event_id = %s AND status = 'pending')",
        (event_id,),
    )
    held = data.event_state(event_id)["byStatus"]

    # The head of the line, promoted first: their owners watch their own sockets.
    watched = data.sql(
        "SELECT booking_id, user_id FROM bookings WHERE event_id = %s AND status = 'waitlisted'"
        " ORDER BY queue_seq LIMIT %s",
        (event_id, args.sockets),
    )
    token_of = dict(zip([u for _, u in watched], mint_tokens([u for _, u in watched]), strict=True))

    # One second, T .. T + 1 s, one end per group of a batch's size, in the order decided.
    groups = max(1, -(-args.holds // batch_size))
    (t0,) = data.sql("SELECT date_trunc('second', now()) + %s * interval '1 second'",
                     (int(args.lead) + 1,))[0]  # fmt: skip
    data.sql(
        "UPDATE bookings b SET expires_at = %s + ((r.n - 1) / %s) * (interval '1 second' / %s)"
        " FROM (SELECT id, row_number() OVER (ORDER BY queue_seq) n FROM bookings"
        "       WHERE event_id = %s AND status = 'held') r WHERE b.id = r.id",
        (t0, batch_size, groups, event_id),
    )
    ends = [
        e
        for (e,) in data.sql(
            "SELECT DISTINCT expires_at FROM bookings WHERE event_id = %s AND status = 'held'"
            " ORDER BY 1",
            (event_id,),
        )
    ]
    expires_at = {
        b: float(t)
        for b, t in data.sql(
            "SELECT booking_id, extract(epoch FROM expires_at) FROM bookings"
            " WHERE event_id = %s AND status = 'held'",
            (event_id,),
        )
    }

    batches: list[tuple[float, list[dict[str, Any]]]] = []
    channel = f"{_namespace(args.redis_url)}:decisions"
    listener = asyncio.create_task(listen_decisions(args.redis_url, channel, batches))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sockets = await open_sockets(session, stack.ws_url, token_of)
        timers = redis.Redis.from_url(args.redis_url)
        for end in ends:
            holds.set_timers(timers, sender, event_id, end, horizon=float(TIMER_HORIZON),
                             warn_before=60)  # fmt: skip
        timers.close()
        await asyncio.sleep(max(0.0, t0.timestamp() + 1 - time.time()))
        expire_seconds = await asyncio.to_thread(
            _wait_for,
            data,
            "SELECT count(*) < %s FROM bookings WHERE event_id = %s AND status = 'expired'",
            (args.holds, event_id),
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
            sockets[u].first(b, "held") for b, u in watched
        ):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        for sock in sockets.values():
            await sock.ws.close()
            if sock.task is not None:
                await asyncio.gather(sock.task, return_exceptions=True)
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)
    sender.close()

    expired_late: list[float] = []
    promoted_late: list[float] = []
    freed_at: dict[str, float] = {}  # promoted booking -> end of the hold whose seat it took
    for heard, decisions in batches:
        gone = [d["bookingId"] for d in decisions if d.get("status") == "expired"]
        up = [d["bookingId"] for d in decisions if d.get("promoted")]
        expired_late += [(heard - expires_at[b]) * 1000 for b in gone if b in expires_at]
        for booking_id, seat_of in zip(up, gone, strict=False):
            if seat_of in expires_at:
                freed_at[booking_id] = expires_at[seat_of]
                promoted_late.append((heard - expires_at[seat_of]) * 1000)
    socket_late = [
        (received - freed_at[b]) * 1000
        for b, u in watched
        if b in freed_at and (received := sockets[u].first(b, "held")) is not None
    ]
    state = data.event_state(event_id)
    by_status = state["byStatus"]
    told = sum(1 for b, u in watched if sockets[u].first(b, "held") is not None)
    promoted = min(args.holds, args.waitlisted)
    checks = {
        "allHeldFirst": held.get("held") == args.holds
        and held.get("waitlisted") == args.waitlisted,
        "everyHoldExpired": by_status.get("expired") == args.holds,
        "everyExpiryHeard": len(expired_late) == args.holds,
        # On an event with holds, a promoted request is held in its turn.
        "waitlistPromoted": by_status.get("held") == promoted and len(promoted_late) == promoted,
        "promotedToldOnSocket": told == len(watched),
        "seatsBack": state["availableSeats"] == args.holds - promoted,
        "seatInvariant": state["invariantViolations"] == 0,
        "socketErrors": not any(s.error for s in sockets.values()),
    }
    return {
        "holds": args.holds,
        "waitlisted": args.waitlisted,
        "timers": len(ends),
        "decideSeconds": round(decide_seconds, 3),
        "expireSeconds": round(expire_seconds, 3),
        "batches": sum(1 for _, d in batches if any(x.get("status") == "expired" for x in d)),
        "expiryToChannelMs": _percentiles(expired_late),
        "expiryToPromotionOnChannelMs": _percentiles(promoted_late),
        "expiryToPromotedSocketMs": _percentiles(socket_late),
        "socketsWatched": len(watched),
        "final": state,
        "checks": checks,
        "ok": all(checks.values()),
    }


# ------------------------------------------------------------------ 2. the sale, on and off


async def sale(
    args: argparse.Namespace, stack: Stack, data: Data, tokens: list[str], hold: bool,
    requests: int, seats: int, label: str,
) -> dict[str, Any]:  # fmt: skip
    event_id = data.create_event(seats, 1, f"Flash sale ({label})")
    if hold:
        data.sql("UPDATE events SET hold_seconds = %s WHERE id = %s", (SALE_HOLD_SECONDS, event_id))
    progress = _progress(requests, label, args.no_progress)
    spies = stack.profile(args.profile / label.replace(" ", "-")) if args.profile else []
    started = time.time()
    try:
        with CpuMeter(stack, data, args.database_url) as cpu:
            outcomes = await run_clients(
                stack.url, tokens, event_id, requests=requests, clients=args.clients,
                wait=args.wait, sync=False, progress=progress,
            )  # fmt: skip
    finally:
        _stop_spies(spies)
    seconds = time.time() - started
    progress.close()
    state = data.event_state(event_id)
    finals: dict[str, int] = {}
    for o in outcomes:
        finals[o.final] = finals.get(o.final, 0) + 1
    taken = "held" if hold else "confirmed"
    server = sum(v for k, v in cpu.seconds.items() if k != "client")
    five_xx = sum(1 for o in outcomes for code in o.statuses if code >= 500)
    return {
        "holds": hold,
        "seconds": round(seconds, 3),
        "perSecond": round(len(outcomes) / seconds, 1),
        "latencyMs": _percentiles(
            [(o.decided - o.sent) * 1000 for o in outcomes if o.decided is not None]
        ),
        "outcomes": finals,
        "serverCpuMsPerRequest": round(1000 * server / max(1, len(outcomes)), 3),
        "cpuSeconds": cpu.seconds,
        "byStatus": state["byStatus"],
        "ok": finals.get(taken) == seats
        and finals.get("rejected") == requests - seats
        and state["byStatus"].get(taken) == seats
        and state["invariantViolations"] == 0
        and five_xx == 0,
    }


async def sales(
    args: argparse.Namespace, stack: Stack, data: Data, tokens: list[str]
) -> dict[str, Any]:
    if args.warmup:
        for hold in (False, True):
            await sale(args, stack, data, tokens[-args.warmup :], hold, args.warmup,
                       args.warmup // 4, "warm-up")  # fmt: skip
    pairs = []
    for i in range(args.pairs):
        order = (True, False) if i % 2 else (False, True)
        runs: dict[bool, dict[str, Any]] = {}
        for hold in order:
            data.vacuum()
            label = f"pair {i + 1} holds {'on' if hold else 'off'}"
            runs[hold] = await sale(
                args, stack, data, tokens, hold, args.requests, args.seats, label
            )
        on, off = runs[True], runs[False]
        pairs.append(
            {
                "first": "on" if order[0] else "off",
                "on": on,
                "off": off,
                "timeRatio": round(on["seconds"] / off["seconds"], 3),
                "cpuRatio": round(on["serverCpuMsPerRequest"] / off["serverCpuMsPerRequest"], 3),
            }
        )
    return {
        "pairs": pairs,
        "meanTimeRatio": round(statistics.mean(p["timeRatio"] for p in pairs), 3),
        "meanCpuRatio": round(statistics.mean(p["cpuRatio"] for p in pairs), 3),
        "ok": all(p["on"]["ok"] and p["off"]["ok"] for p in pairs),
    }


# ------------------------------------------------------------------ report


def table(summary: dict[str, Any]) -> str:
    def pct(p: dict[str, float] | None) -> str:
        return "-" if not p else f"p50 {p['p50']} / p99 {p['p99']} / max {p['max']} ms"

    lines = []
    if (e := summary.get("expiry")) is not None:
        lines += [
            f"expiry: {e['holds']} holds ending within one second ({e['timers']} timers),"
            f" {e['waitlisted']} waitlisted; all expired {e['expireSeconds']} s after T+1 s,"
            f" in {e['batches']} batches",
            f"  expiresAt -> expired batch on the decisions channel: {pct(e['expiryToChannelMs'])}",
            f"  expiresAt -> promotion on the channel: {pct(e['expiryToPromotionOnChannelMs'])}",
            f"  expiresAt -> promoted buyer's socket ({e['socketsWatched']}):"
            f" {pct(e['expiryToPromotedSocketMs'])}",
            f"  checks: {'all passed' if e['ok'] else e['checks']}",
        ]
    if (s := summary.get("sale")) is not None:
        for i, p in enumerate(s["pairs"], 1):
            for kind in (p["first"], "off" if p["first"] == "on" else "on"):
                r = p[kind]
                lines.append(
                    f"sale pair {i} holds {kind:3}: {r['seconds']} s, {r['perSecond']} req/s,"
                    f" {pct(r['latencyMs'])}, server CPU {r['serverCpuMsPerRequest']} ms/req,"
                    f" {'ok' if r['ok'] else r['outcomes']}"
                )
            lines.append(f"  on/off: time {p['timeRatio']}, server CPU {p['cpuRatio']}")
        lines.append(f"sale mean on/off: time {s['meanTimeRatio']}, CPU {s['meanCpuRatio']}")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    check_targets(args.database_url, args.redis_url, args.reuse_database)
    from common.settings import Settings

    batch_size = args.batch_size or Settings(_env_file=None).BATCH_SIZE
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    config = StackConfig(
        database_url=args.database_url,
        redis_url=args.redis_url,
        api_workers=args.api_workers,
        worker_concurrency=args.worker_concurrency,
        pool_size=None,
        batch_size=args.batch_size,
        start_worker=not args.no_worker,
        reuse_database=args.reuse_database,
        log_dir=args.out / f"logs-holds-{stamp}",
        extra_env={
            "HOLD_TIMER_HORIZON": TIMER_HORIZON,
            **dict(item.split("=", 1) for item in args.env),
        },
    )
    print(f"preparing {args.database_url} and {args.redis_url}", file=sys.stderr)
    prepare_database(args.database_url, args.reuse_database)
    data = Data(args.database_url)
    users = data.create_users(max(args.holds + args.waitlisted, args.requests))
    data.vacuum()
    before = machine()
    stack = Stack(config).start()
    summary: dict[str, Any] = {
        "generatedAt": stamp,
        "command": "python -m bench.holds " + " ".join(sys.argv[1:]),
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "database_url")},
    }
    try:
        if args.skip != "expiry":
            summary["expiry"] = await expiry_lateness(args, data, stack, users, batch_size)
        if args.skip != "sale":
            summary["sale"] = await sales(args, stack, data, mint_tokens(users[: args.requests]))
    finally:
        stack.stop()
        data.close()
    summary["machine"] = {**before, "loadAverageAfter": [round(x, 2) for x in os.getloadavg()]}
    summary["ok"] = all(summary[k]["ok"] for k in ("expiry", "sale") if k in summary)
    path = args.out / f"holds-{stamp}.json"
    path.write_text(json.dumps(summary, indent=2, default=str))
    summary["files"] = {"json": str(path)}
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = asyncio.run(main_async(args))
    print(table(summary))
    print(f"json: {summary['files']['json']}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
