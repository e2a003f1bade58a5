"""Waitlist benchmark: a sold-out sale with a waitlist, then cancellations that promote from it.

    python -m bench.waitlist --seats 500 --requests 5000      (make bench BENCH=waitlist)

Its own database and Redis db, uvicorn and Celery worker, as bench.flash_sale. One event of S
seats with its waitlist on; C clients send N one-seat requests (one user each, ``Prefer: wait``)
and follow each to ``confirmed`` or ``waitlisted``. Once none is pending, S/10 confirmed
bookings (drawn with a fixed seed) are cancelled by their owners (``DELETE`` with ``Prefer:
wait``) at a steady rate. Each cancellation's transaction promotes the head of the waitlist.

Promotion latency: from the commit of the cancellation that freed the seat to the promoted
buyer's ``booking_status`` confirmed on their own WebSocket (``/ws``). The commit time is the
cancellation's ``cancelled_at``, the decider's transaction timestamp (taken when that transaction
began, so a little before its commit: the figure is an upper bound); the pairing of promotion and
cancellation is the batch they were published in (one ``booking_statuses`` message per committed
batch on the decisions channel, which the benchmark also listens to). Under the head-of-line rule
with one seat each, only the first S/10 of the waitlist can be promoted: only their owners, M
behind them (who must not be promoted) and the cancelling owners open sockets, not thousands.
Also reported: from sending the DELETE, and from the canceller's own ``cancelled`` message.

Checked, exit 1 if not: nothing lost (no request pending or unanswered, every DELETE answered
200 ``cancelled``), no 5xx, exactly the first S/10 waitlisted promoted in arrival order and every
one told on its socket, nobody behind them promoted, ``available + confirmed = capacity``, the
event full again, nobody waiting while a seat is free, and the audit log's ``waitlisted`` then
``promoted`` entries of each promoted booking.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

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
from devstack import ROOT


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.waitlist", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--clients", "-c", type=int, default=100, help="concurrent clients of the sale (C)")
    add("--requests", "-n", type=int, default=5_000, help="booking requests, one user each (N)")
    add("--seats", "-s", type=int, default=500, help="seats of the event (S)")
    add("--cancellations", type=int, default=None, help="confirmed bookings cancelled; S/10")
    add("--cancel-rate", type=float, default=20.0, help="cancellations sent per second")
    add("--margin", type=int, default=10, help="sockets behind the promoted, who must wait (M)")
    add("--wait", type=int, default=30, help="Prefer: wait=N seconds")
    add("--api-workers", type=int, default=2, help="uvicorn worker processes")
    add("--worker-concurrency", type=int, default=1, help="Celery worker processes")
    add("--seed", type=int, default=12, help="which confirmed bookings are cancelled")
    add_target_args(parser)
    add("--no-worker", action="store_true", help="a Celery worker on that Redis db is running")
    add("--out", type=Path, default=ROOT / "bench" / "results", help="JSON and logs")
    add("--env", action="append", default=[], metavar="NAME=VALUE",
        help="a setting for the API and worker (repeatable)")  # fmt: skip
    add("--no-progress", action="store_true")
    return parser.parse_args(argv)


@dataclass
class Socket:
    """One buyer's ``/ws``: when each of their bookings' statuses arrived."""

    user_id: int
    ws: Any = None
    task: asyncio.Task[None] | None = None
    statuses: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    error: str | None = None

    def first(self, booking_id: str, status: str) -> float | None:
        return next(
            (
                t
                for t, m in self.statuses
                if m.get("bookingId") == booking_id and m.get("status") == status
            ),
            None,
        )


async def open_sockets(
    session: aiohttp.ClientSession, ws_url: str, tokens: dict[int, str]
) -> dict[int, Socket]:
    sockets: dict[int, Socket] = {}

    async def read(sock: Socket) -> None:
        try:
            async for message in sock.ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                now = time.time()
                payload = json.loads(message.data)
                if isinstance(payload, dict) and payload.get("type") == "booking_status":
                    sock.statuses.append((now, payload.get("data") or {}))
        except Exception as exc:  # reported; the run goes on
            sock.error = repr(exc)

    for user_id, token in tokens.items():
        sock = Socket(user_id)
        sock.ws = await session.ws_connect(
            f"{ws_url}/ws", params={"token": token}, timeout=aiohttp.ClientWSTimeout(ws_close=5)
        )
        sock.task = asyncio.create_task(read(sock))
        sockets[user_id] = sock
    await asyncio.sleep(0.5)  # every socket registered with its API process
    return sockets


async def listen_decisions(
    redis_url: str, channel: str, batches: list[tuple[float, list[dict[str, Any]]]]
) -> None:
    """Every committed batch's decisions as published (pairs a promotion with its cancellation)."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    try:
        async for message in pubsub.listen():
            if message.get("type") != "message":
                continue
            payload = json.loads(message["data"])
            if payload.get("type") == "booking_statuses":
                batches.append((time.time(), payload["data"]["decisions"]))
    finally:
        await pubsub.aclose()
        await client.aclose()


async def cancel_all(
    url: str, targets: list[tuple[str, str]], rate: float, wait: int
) -> list[dict[str, Any]]:
    """DELETE each (booking id, owner's token) at ``rate`` per second, open loop."""
    results: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=wait + 30)) as session:

        async def one(i: int, booking_id: str, token: str) -> None:
            await asyncio.sleep(max(0.0, start + i / rate - time.time()))
            sent = time.time()
            headers = {"Authorization": f"Bearer {token}", "Prefer": f"wait={wait}"}
            try:
                async with session.delete(
                    f"{url}/api/bookings/{booking_id}", headers=headers
                ) as response:
                    body = await response.json(content_type=None)
                    code = response.status
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                body, code = {"error": repr(exc)}, 0
            results.append(
                {
                    "bookingId": booking_id,
                    "sent": sent,
                    "answered": time.time(),
                    "httpStatus": code,
                    "status": (body.get("data") or {}).get("status"),
                }
            )

        start = time.time() + 0.2
        await asyncio.gather(*(one(i, b, t) for i, (b, t) in enumerate(targets)))
    return results


def wait_until_decided(data: Data, event_id: int, timeout: float = 600) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not data.sql(
            "SELECT EXISTS (SELECT 1 FROM bookings WHERE event_id = %s AND status = 'pending')",
            (event_id,),
        )[0][0]:
            break
        time.sleep(0.05)
    return time.monotonic() - started


async def run(args: argparse.Namespace, stack: Stack, data: Data, users: list[int]) -> dict:
    # The channel's name for the benchmark's Redis db (this process's settings name another).
    from common.channels import _namespace

    tokens = mint_tokens(users)
    token_of = dict(zip(users, tokens, strict=True))
    event_id = data.create_event(args.seats, 1, "Waitlist sale")
    data.sql("UPDATE events SET waitlist_enabled = true WHERE id = %s", (event_id,))
    cancellations = args.cancellations if args.cancellations is not None else args.seats // 10

    # 1. The sale: N requests for S seats, each followed until confirmed or waitlisted.
    progress = _progress(args.requests, "sale", args.no_progress)
    started = time.time()
    outcomes = await run_clients(
        stack.url,
        tokens,
        event_id,
        requests=args.requests,
        clients=args.clients,
        wait=args.wait,
        sync=False,
        progress=progress,
    )
    progress.close()
    sale_seconds = time.time() - started
    settle_seconds = wait_until_decided(data, event_id)
    after_sale = data.event_state(event_id)
    finals: dict[str, int] = {}
    for outcome in outcomes:
        finals[outcome.final] = finals.get(outcome.final, 0) + 1

    # 2. Who cancels, who should be promoted (the head of the waitlist), who must wait.
    confirmed = data.sql(
        "SELECT booking_id, user_id FROM bookings WHERE event_id = %s AND status = 'confirmed'"
        " ORDER BY booking_id",
        (event_id,),
    )
    chosen = random.Random(args.seed).sample(confirmed, min(cancellations, len(confirmed)))
    waitlist = data.sql(
        "SELECT booking_id, user_id FROM bookings WHERE event_id = %s AND status = 'waitlisted'"
        " ORDER BY queue_seq LIMIT %s",
        (event_id, len(chosen) + args.margin),
    )
    head, behind = waitlist[: len(chosen)], waitlist[len(chosen) :]
    watched = {u: token_of[u] for _, u in chosen + waitlist}

    # 3. The cancellations, with the sockets and the decisions channel listening.
    batches: list[tuple[float, list[dict[str, Any]]]] = []
    channel = f"{_namespace(args.redis_url)}:decisions"
    listener = asyncio.create_task(listen_decisions(args.redis_url, channel, batches))
    # No pool limit: each socket holds its connection (aiohttp's default of 100 would make the
    # 101st wait for one forever).
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sockets = await open_sockets(session, stack.ws_url, watched)
        cancelled = await cancel_all(
            stack.url, [(b, token_of[u]) for b, u in chosen], args.cancel_rate, args.wait
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(sockets[u].first(b, "confirmed") for b, u in head):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # anything late (or wrong) for the sockets behind
        for sock in sockets.values():
            await sock.ws.close()
            if sock.task is not None:
                await asyncio.gather(sock.task, return_exceptions=True)
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)

    return measure(
        args, data, event_id, outcomes, finals, after_sale, chosen, head, behind, sockets,
        cancelled, batches, sale_seconds, settle_seconds,
    )  # fmt: skip


def measure(
    args: argparse.Namespace,
    data: Data,
    event_id: int,
    outcomes: list[Any],
    finals: dict[str, int],
    after_sale: dict[str, Any],
    chosen: list[tuple[str, int]],
    head: list[tuple[str, int]],
    behind: list[tuple[str, int]],
    sockets: dict[int, Socket],
    cancelled: list[dict[str, Any]],
    batches: list[tuple[float, list[dict[str, Any]]]],
    sale_seconds: float,
    settle_seconds: float,
) -> dict[str, Any]:
    state = data.event_state(event_id)
    cancelled_at = {
        b: float(t)
        for b, t in data.sql(
            "SELECT booking_id, extract(epoch FROM cancelled_at) FROM bookings"
            " WHERE event_id = %s AND status = 'cancelled'",
            (event_id,),
        )
    }
    # In the order the promotions were logged (committed): must be the order of the line.
    promoted_order = [
        b
        for (b,) in data.sql(
            "SELECT booking_id FROM booking_logs WHERE event_id = %s AND action = 'promoted'"
            " ORDER BY id",
            (event_id,),
        )
    ]
    promoted_db = set(promoted_order)
    logs_in_order = data.sql(
        "SELECT count(*) FROM (SELECT booking_id, array_agg(action ORDER BY id) a"
        " FROM booking_logs WHERE event_id = %s GROUP BY booking_id) l"
        " WHERE array_position(a, 'promoted') > array_position(a, 'waitlisted')",
        (event_id,),
    )[0][0]
    stuck = data.sql(
        "SELECT count(*) FROM events e CROSS JOIN LATERAL (SELECT b.quantity FROM bookings b"
        " WHERE b.event_id = e.id AND b.status = 'waitlisted' ORDER BY b.queue_seq LIMIT 1) h"
        " WHERE e.id = %s AND h.quantity <= e.available_seats",
        (event_id,),
    )[0][0]

    # The batch each promotion was published in, and the cancellations committed with it (one
    # transaction, one commit): their cancelled_at, their owners' own message, their DELETEs.
    sent_at = {c["bookingId"]: c["sent"] for c in cancelled}
    owner_of = dict(chosen)
    freed_by: dict[str, float] = {}
    canceller_told: dict[str, float] = {}
    delete_sent: dict[str, float] = {}
    heard: dict[str, float] = {}  # when the benchmark's own subscriber got the batch
    for published, decisions in batches:
        gone = [d["bookingId"] for d in decisions if d.get("status") == "cancelled"]
        promoted = [
            d["bookingId"]
            for d in decisions
            if d.get("status") == "confirmed" and d.get("promoted")
        ]
        commits = [cancelled_at[b] for b in gone if b in cancelled_at]
        told = [
            t
            for b in gone
            if b in owner_of and (t := sockets[owner_of[b]].first(b, "cancelled")) is not None
        ]
        # Seats go to the line in its order; pair them with the DELETEs in the order sent.
        sends = sorted(sent_at[b] for b in gone if b in sent_at)
        for i, booking_id in enumerate(promoted):
            heard[booking_id] = published
            if commits:
                freed_by[booking_id] = max(commits)
            if told:
                canceller_told[booking_id] = min(told)
            if sends:
                delete_sent[booking_id] = sends[min(i, len(sends) - 1)]

    from_commit, from_canceller, from_delete, unpaired = [], [], [], 0
    to_channel, channel_to_socket = [], []
    for booking_id, user_id in head:
        received = sockets[user_id].first(booking_id, "confirmed")
        if received is None:
            continue
        if booking_id in freed_by:
            from_commit.append((received - freed_by[booking_id]) * 1000)
            # The worker's part (rest of the transaction, commit, publish) and the API's (its
            # subscription, fan-out, the socket), split where a subscriber beside it hears it.
            to_channel.append((heard[booking_id] - freed_by[booking_id]) * 1000)
            channel_to_socket.append((received - heard[booking_id]) * 1000)
        else:
            unpaired += 1
        if booking_id in canceller_told:
            from_canceller.append((received - canceller_told[booking_id]) * 1000)
        if booking_id in delete_sent:
            from_delete.append((received - delete_sent[booking_id]) * 1000)

    told_count = sum(1 for b, u in head if sockets[u].first(b, "confirmed") is not None)
    head_ids = {b for b, _ in head}
    behind_promoted = sum(1 for b, u in behind if sockets[u].first(b, "confirmed") is not None)
    answered = sum(1 for c in cancelled if c["httpStatus"] == 200 and c["status"] == "cancelled")
    five_xx = sum(1 for o in outcomes for code in o.statuses if code >= 500) + sum(
        1 for c in cancelled if c["httpStatus"] >= 500
    )
    checks = {
        "saleAllSettled": finals.get("pending", 0) == 0 and finals.get("error", 0) == 0,
        "saleFilledThenWaitlisted": after_sale["confirmedSeats"] == args.seats
        and after_sale["byStatus"].get("waitlisted", 0) == args.requests - args.seats,
        "nothingPending": state["byStatus"].get("pending", 0) == 0,
        "everyCancellationAnswered": answered == len(chosen),
        "promotedAreTheHeadInOrder": promoted_order == [b for b, _ in head],
        "everyPromotedToldOnSocket": told_count == len(head),
        "nobodyBehindPromoted": behind_promoted == 0 and not (promoted_db - head_ids),
        "eventFullAgain": state["confirmedSeats"] == args.seats == state["capacity"],
        "seatInvariant": state["invariantViolations"] == 0,
        "noStuckWaitlist": stuck == 0,
        "auditWaitlistedThenPromoted": logs_in_order == len(head),
        "no5xx": five_xx == 0,
        "socketErrors": not any(s.error for s in sockets.values()),
    }
    return {
        "eventId": event_id,
        "sale": {
            "requests": len(outcomes),
            "seconds": round(sale_seconds, 3),
            "settleSeconds": round(settle_seconds, 3),
            "outcomes": finals,
            "latencyMs": _percentiles(
                [(o.decided - o.sent) * 1000 for o in outcomes if o.decided is not None]
            ),
            "byStatus": after_sale["byStatus"],
        },
        "cancellations": {
            "count": len(chosen),
            "ratePerSecond": args.cancel_rate,
            "answered200": answered,
            "deleteLatencyMs": _percentiles(
                [(c["answered"] - c["sent"]) * 1000 for c in cancelled]
            ),
            "batches": sum(1 for _, d in batches if any(x.get("status") == "cancelled" for x in d)),
        },
        "promotion": {
            "promoted": len(promoted_db),
            "toldOnSocket": told_count,
            "unpaired": unpaired,
            "fromCommitMs": _percentiles(from_commit),
            "commitToDecisionsChannelMs": _percentiles(to_channel),
            "decisionsChannelToSocketMs": _percentiles(channel_to_socket),
            "fromCancellerMessageMs": _percentiles(from_canceller),
            "fromDeleteSentMs": _percentiles(from_delete),
        },
        "final": state,
        "fiveXX": five_xx,
        "checks": checks,
        "ok": all(checks.values()),
    }


def table(summary: dict[str, Any]) -> str:
    r = summary["result"]
    sale, cancel, promo = r["sale"], r["cancellations"], r["promotion"]

    def pct(p: dict[str, float] | None) -> str:
        return "-" if not p else f"p50 {p['p50']} / p99 {p['p99']} / max {p['max']} ms"

    lines = [
        f"waitlist sale: S={summary['config']['seats']} N={sale['requests']}"
        f" C={summary['config']['clients']}",
        f"  sale: {sale['seconds']} s, outcomes {sale['outcomes']}, in DB {sale['byStatus']}",
        f"  request -> confirmed/waitlisted: {pct(sale['latencyMs'])}",
        f"  cancellations: {cancel['count']} at {cancel['ratePerSecond']}/s,"
        f" {cancel['answered200']} answered 200, in {cancel['batches']} batches;"
        f" DELETE {pct(cancel['deleteLatencyMs'])}",
        f"  promoted {promo['promoted']}, told on their socket {promo['toldOnSocket']}",
        f"  promotion, cancellation's commit -> promoted's socket: {pct(promo['fromCommitMs'])}",
        f"    commit -> the decisions channel: {pct(promo['commitToDecisionsChannelMs'])}",
        f"    the decisions channel -> socket: {pct(promo['decisionsChannelToSocketMs'])}",
        f"    canceller's own message -> promoted's: {pct(promo['fromCancellerMessageMs'])}",
        f"    DELETE sent -> promoted's socket: {pct(promo['fromDeleteSentMs'])}",
        f"  checks: {'all passed' if r['ok'] else r['checks']}",
    ]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    check_targets(args.database_url, args.redis_url, args.reuse_database)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    config = StackConfig(
        database_url=args.database_url,
        redis_url=args.redis_url,
        api_workers=args.api_workers,
        worker_concurrency=args.worker_concurrency,
        pool_size=None,
        batch_size=None,
        start_worker=not args.no_worker,
        reuse_database=args.reuse_database,
        log_dir=args.out / f"logs-waitlist-{stamp}",
        extra_env=dict(item.split("=", 1) for item in args.env),
    )
    print(f"preparing {args.database_url} and {args.redis_url}", file=sys.stderr)
    prepare_database(args.database_url, args.reuse_database)
    data = Data(args.database_url)
    users = data.create_users(args.requests)
    data.vacuum()
    before = machine()
    stack = Stack(config).start()
    try:
        result = await run(args, stack, data, users)
    finally:
        stack.stop()
        data.close()
    summary = {
        "generatedAt": stamp,
        "command": "python -m bench.waitlist " + " ".join(sys.argv[1:]),
        "config": {
            "clients": args.clients,
            "requests": args.requests,
            "seats": args.seats,
            "cancelRate": args.cancel_rate,
            "apiWorkers": args.api_workers,
            "workerConcurrency": args.worker_concurrency,
            "wait": args.wait,
            "env": args.env,
        },
        "machine": {**before, "loadAverageAfter": [round(x, 2) for x in os.getloadavg()]},
        "result": result,
    }
    path = args.out / f"waitlist-{stamp}.json"
    path.write_text(json.dumps(summary, indent=2))
    summary["files"] = {"json": str(path)}
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = asyncio.run(main_async(args))
    print(table(summary))
    print(f"json: {summary['files']['json']}")
    return 0 if summary["result"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
