"""Webhook benchmark: the same flash sale with and without webhooks, in one run.

    python -m bench.webhooks -c 200 -n 10000 -s 2500          (make bench BENCH=webhooks)

Its own database and Redis db, uvicorn and a Celery worker as bench.flash_sale, plus a Celery
worker for the ``webhooks`` queue alone and a receiver on loopback (bench/receiver.py) that
answers 200 at once (under ``nice -n 19``: a receiver is someone else's machine, not ours).
Each round runs the flash sale (C clients, N one-seat requests, S seats,
``Prefer: wait``) once in each variant:

- ``off``: the outbox trigger disabled (the system as if webhooks were not built);
- ``idle``: the trigger on, no endpoint enabled (what every sale pays for webhooks existing);
- ``hooks``: two endpoints enabled, subscribed to everything (every decision sent twice).

The variants' order turns from round to round (and reverses every other round), so none always
runs first on a warm or cold machine. Before each sale the outbox of the one before is
delivered: a sale never shares the machine with another's deliveries.

Reported per sale: decisions/s and latency as bench.flash_sale computes them, CPU seconds by
process; for ``hooks`` also deliveries/s (messages received / from the first decision to the last
receipt), the lag from decision to receipt (p50, p99; the decision's time is its audit row's
``timestamp``, its transaction's start, so the lag is an upper bound by the length of one
decided batch) and how long after the last decision the last message arrived. Every message
must arrive and verify with the ``standardwebhooks`` verifier. Ratios: each round's ``hooks``
and ``idle`` decisions/s over its ``off``; their median over the rounds.

Checked, exit 1 if not: no 5xx, no oversell, nothing lost, every message of every ``hooks`` sale
received on both endpoints and verified.
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

from bench import flash_sale
from bench.cpu import _descendants, cpu_seconds
from bench.flash_sale import machine, mint_tokens
from bench.load import _percentiles, run_clients
from bench.stack import Data, Stack, StackConfig, add_target_args, check_targets, prepare_database
from devstack import BIN, ROOT, ManagedProcess, WorkerProcess, free_port, wait_until

VARIANTS = ("off", "idle", "hooks")
PATHS = ("/a", "/b")  # the two endpoints, one receiver
TRIGGER = "booking_logs_webhooks"
SCOPES_TTL = 1.0  # worker/webhooks.py: how long the decider trusts its list of endpoints


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.webhooks", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--clients", "-c", type=int, default=200, help="concurrent clients (C)")
    add("--requests", "-n", type=int, default=10_000, help="booking requests per sale (N)")
    add("--seats", "-s", type=int, default=2_500, help="seats of each sale's event (S)")
    add("--rounds", "-r", type=int, default=4, help="rounds, each a sale per variant")
    add("--variants", default=",".join(VARIANTS), help="which variants, of off,idle,hooks")
    add("--max-per-user", type=int, default=10, help="the event's maxSeatsPerUser")
    add("--wait", type=int, default=30, help="Prefer: wait=N seconds")
    add("--warmup", type=int, default=1000, help="unmeasured requests before the first round")
    add("--api-workers", type=int, default=2, help="uvicorn worker processes")
    add("--worker-concurrency", type=int, default=1, help="Celery processes deciding")
    add("--hook-concurrency", type=int, default=2, help="Celery processes delivering webhooks")
    add("--hook-nice", type=int, default=0, help="run the webhooks worker under nice -n N")
    # A receiver is another company's server: here it shares our two cores, so by default it
    # yields to the system under test (its CPU is still counted, apart).
    add("--receiver-nice", type=int, default=19, help="run the receiver under nice -n N")
    add("--settle", type=float, default=300, help="seconds to wait for a sale's deliveries")
    add_target_args(parser)
    add("--no-worker", action="store_true", help="a Celery worker on that Redis db decides")
    add("--out", type=Path, default=ROOT / "bench" / "results", help="JSON and logs")
    add("--profile", type=Path, default=None, help="py-spy every process into this dir")
    add("--env", action="append", default=[], metavar="NAME=VALUE",
        help="a setting for the API and workers (repeatable)")  # fmt: skip
    add("--no-progress", action="store_true")
    return parser.parse_args(argv)


def order(round_index: int, variants: list[str]) -> list[str]:
    """The variants turned by one each round, reversed every other round."""
    turn = (round_index // 2) % len(variants)
    turned = variants[turn:] + variants[:turn]
    return turned[::-1] if round_index % 2 else turned


def yield_cpu(process: ManagedProcess, nice: int) -> None:
    """``nice`` for the process's whole session. Each process started here leads a session of
    its own, and with the kernel's autogroups (sched(7)) CPU is shared between sessions by the
    session's nice, not the process's: ``nice -n`` alone would change nothing."""
    if not nice or process.proc is None:
        return
    try:
        Path(f"/proc/{process.proc.pid}/autogroup").write_text(str(nice))
    except OSError:  # no autogroups (a kernel without them): the process's nice applies
        pass


class Receiver(ManagedProcess):
    def __init__(self, log_dir: Path, env: dict[str, str], nice: int) -> None:
        super().__init__("receiver", log_dir)
        self.env, self.port, self.nice = env, free_port(), nice

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Receiver:
        prefix = ["nice", "-n", str(self.nice)] if self.nice else []
        argv = [*prefix, str(BIN / "python"), "-m", "bench.receiver", "--port", str(self.port)]
        self.spawn(argv, self.env)
        yield_cpu(self, self.nice)
        self.wait_for(lambda: self._get("/_count") is not None, 30, "the receiver")
        return self

    def _get(self, path: str) -> Any:
        import urllib.request

        try:
            with urllib.request.urlopen(self.base + path, timeout=30) as answer:
                return json.loads(answer.read())
        except OSError:
            return None

    def count(self) -> int:
        return int(self._get("/_count")["count"])

    def records(self, start: int) -> list[list[Any]]:
        return list(self._get(f"/_records?from={start}"))

    def verify(self, secrets: dict[str, str], start: int) -> dict[str, int]:
        import urllib.request

        request = urllib.request.Request(
            f"{self.base}/_verify?from={start}",
            data=json.dumps(secrets).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            return dict(json.loads(answer.read()))


def create_endpoints(data: Data, owner: int, receiver: Receiver) -> dict[str, str]:
    """Two endpoints for everything (no types, no event), disabled until a ``hooks`` sale."""
    from common.webhooks.messages import new_secret

    secrets = {}
    for path in PATHS:
        secret = new_secret()
        data.sql(
            "INSERT INTO webhook_endpoints (owner_id, url, secret, enabled) VALUES (%s, %s, %s,"
            " false)",
            (owner, receiver.base + path, secret),
        )
        secrets[path] = secret
    return secrets


def set_variant(data: Data, variant: str) -> None:
    trigger = "DISABLE" if variant == "off" else "ENABLE"
    data.sql(f"ALTER TABLE booking_logs {trigger} TRIGGER {TRIGGER}")
    data.sql("UPDATE webhook_endpoints SET enabled = %s", (variant == "hooks",))
    time.sleep(SCOPES_TTL + 0.5)  # the decider's list of enabled endpoints is this old at most


def pending(data: Data) -> int:
    return int(data.sql("SELECT count(*) FROM webhook_messages WHERE state = 'pending'")[0][0])


def wait_delivered(data: Data, timeout: float) -> None:
    wait_until(lambda: pending(data) == 0, timeout, "the outbox delivered", interval=0.2)


def deliveries(
    data: Data, receiver: Receiver, secrets: dict[str, str], event_id: int, start: int,
    result: dict[str, Any], timeout: float,
) -> dict[str, Any]:  # fmt: skip
    """Wait for every message of the sale's event on both paths; what it took."""
    ids = {f"msg_{r[0]}" for r in data.sql("SELECT id FROM booking_logs WHERE event_id = %s",
                                           (event_id,))}  # fmt: skip
    expected = len(ids) * len(PATHS)
    deadline = time.monotonic() + timeout
    got: dict[tuple[str, str], tuple[float, float]] = {}
    seen = start
    while time.monotonic() < deadline:
        rows = receiver.records(seen)
        seen += len(rows)
        for path, msg_id, at, decided in rows:
            if msg_id in ids:
                got.setdefault((path, msg_id), (at, decided))
        if len(got) >= expected:
            break
        time.sleep(0.2)
    received = list(got.values())
    started = result["timeline"]["start"]
    last_decision = started + (result["wallToLastDecisionSeconds"] or 0)
    first_decided = min((d for _, d in received), default=started)
    last_receipt = max((a for a, _ in received), default=started)
    span = last_receipt - first_decided
    verified = receiver.verify(secrets, start)
    return {
        "expected": expected,
        "received": len(received),
        "duplicates": seen - start - len(received),
        "lost": expected - len(received),
        "deliveriesPerSecond": round(len(received) / span, 1) if span > 0 else None,
        "lagMs": _percentiles([(a - d) * 1000 for a, d in received]),
        "lastReceiptAfterLastDecisionSeconds": round(last_receipt - last_decision, 3),
        "verified": verified,
    }


def tree_cpu(process: ManagedProcess) -> float:
    """CPU seconds of a process and its children (a Celery worker's pool) so far."""
    if process.proc is None:
        return 0.0
    return sum(cpu_seconds(pid) or 0.0 for pid in _descendants([process.proc.pid]))


def sale_args(args: argparse.Namespace) -> argparse.Namespace:
    """What bench.flash_sale's ``run_design`` reads: one sale, no warm-up, no sockets."""
    return argparse.Namespace(
        warmup=0, ws_subscribers=0, max_per_user=args.max_per_user, clients=args.clients,
        wait=args.wait, seats=args.seats, requests=args.requests, no_progress=args.no_progress,
        database_url=args.database_url,
    )  # fmt: skip


def brief(result: dict[str, Any]) -> dict[str, Any]:
    keep = ("decisionsPerSecond", "intakePerSecond", "wallToLastDecisionSeconds", "latencyMs",
            "outcomes", "fiveXX", "oversell", "lost", "cpuSeconds", "serverCpuMsPerRequest",
            "queueLatencyMs")  # fmt: skip
    return {k: result[k] for k in keep if k in result}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    check_targets(args.database_url, args.redis_url, args.reuse_database)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if set(variants) - set(VARIANTS) or "off" not in variants:
        raise SystemExit(f"variants are among {', '.join(VARIANTS)}, with off")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    config = StackConfig(
        database_url=args.database_url, redis_url=args.redis_url, api_workers=args.api_workers,
        worker_concurrency=args.worker_concurrency, pool_size=None, batch_size=None,
        start_worker=not args.no_worker, reuse_database=args.reuse_database,
        log_dir=args.out / f"logs-{stamp}",
        extra_env=dict(item.split("=", 1) for item in args.env),
    )  # fmt: skip
    print(f"preparing {args.database_url} and {args.redis_url}", file=sys.stderr)
    prepare_database(args.database_url, args.reuse_database)
    data = Data(args.database_url)
    users = data.create_users(args.requests)
    tokens = mint_tokens(users)
    data.vacuum()
    before = machine()
    stack = Stack(config).start()
    env = config.env()
    receiver = Receiver(config.log_dir, env, args.receiver_nice).start()
    hooks_worker = WorkerProcess(
        "webhooks-worker", config.log_dir, env, concurrency=args.hook_concurrency,
        queues="webhooks", hostname=f"bench-hooks-{os.getpid()}@%h", nice=args.hook_nice,
    ).start()  # fmt: skip
    yield_cpu(hooks_worker, args.hook_nice)
    # Counted by the CPU meter beside the API and the decider, and stopped with them.
    stack.processes[:0] = [receiver, hooks_worker]
    secrets = create_endpoints(data, users[0], receiver)
    sales: list[dict[str, Any]] = []
    spies: list[Any] = []
    try:
        if args.warmup:
            # Not measured: every process's pools, caches and connections, the deliverers' too.
            set_variant(data, "hooks")
            warm = data.create_event(args.warmup, args.max_per_user, "Warm-up")
            await run_clients(
                stack.url, tokens[-args.warmup :], warm, requests=args.warmup,
                clients=min(args.clients, args.warmup), wait=args.wait, sync=False,
                progress=flash_sale._progress(0, "warm-up", True),
            )  # fmt: skip
            wait_delivered(data, args.settle)
        for round_index in range(args.rounds):
            for variant in order(round_index, variants):
                set_variant(data, variant)
                wait_delivered(data, args.settle)
                data.vacuum()
                start = receiver.count()
                cpu_before = {p.name: tree_cpu(p) for p in (hooks_worker, receiver)}
                if args.profile:
                    spies = stack.profile(args.profile / f"{round_index}-{variant}")
                result = await flash_sale.run_design("queued", stack, data, tokens, sale_args(args))
                flash_sale._stop_spies(spies)
                sale = {"round": round_index, "variant": variant, **brief(result)}
                if variant == "hooks":
                    event_id = int(data.sql("SELECT max(id) FROM events")[0][0])
                    sale["webhooks"] = deliveries(
                        data, receiver, secrets, event_id, start, result, args.settle
                    )
                    # From the sale's start to its last receipt: the deliveries' whole cost,
                    # the tail after the sale included (the sale's own meter stops at its end).
                    spent = {p.name: round(tree_cpu(p) - cpu_before[p.name], 2)
                             for p in (hooks_worker, receiver)}  # fmt: skip
                    received = max(1, sale["webhooks"]["received"])
                    sale["webhooks"]["cpuSeconds"] = spent
                    sale["webhooks"]["cpuMsPerDelivery"] = {
                        name: round(1000 * seconds / received, 3) for name, seconds in spent.items()
                    }
                sales.append(sale)
                print(line(sale), file=sys.stderr)
    finally:
        flash_sale._stop_spies(spies)
        # As the migration leaves it (a reused database must not keep its trigger off).
        data.sql(f"ALTER TABLE booking_logs ENABLE TRIGGER {TRIGGER}")
        data.sql("UPDATE webhook_endpoints SET enabled = false")
        stack.stop()
        data.close()
    summary = {
        "generatedAt": stamp,
        "command": "python -m bench.webhooks " + " ".join(sys.argv[1:]),
        "config": {k: v for k, v in vars(args).items() if not isinstance(v, Path)},
        "machine": {**before, "loadAverageAfter": [round(x, 2) for x in os.getloadavg()]},
        "sales": sales,
        "ratios": ratios(sales),
    }
    path = args.out / f"webhooks-{stamp}.json"
    path.write_text(json.dumps(summary, indent=2, default=str))
    summary["file"] = str(path)
    return summary


def ratios(sales: list[dict[str, Any]]) -> dict[str, Any]:
    """Each round's decisions/s of a variant over its ``off``; the median and range."""
    out: dict[str, Any] = {}
    for variant in ("idle", "hooks"):
        per_round = []
        for sale in sales:
            if sale["variant"] != variant:
                continue
            off = next(s for s in sales if s["round"] == sale["round"] and s["variant"] == "off")
            per_round.append(round(sale["decisionsPerSecond"] / off["decisionsPerSecond"], 3))
        if per_round:
            out[f"{variant}/off"] = {
                "median": round(statistics.median(per_round), 3),
                "min": min(per_round),
                "max": max(per_round),
                "rounds": per_round,
            }
    return out


def line(sale: dict[str, Any]) -> str:
    lat = sale["latencyMs"]
    text = (
        f"round {sale['round']} {sale['variant']:>5}: {sale['decisionsPerSecond']:>8,.1f}"
        f" decisions/s, p50/p99 {lat['p50']:,.0f}/{lat['p99']:,.0f} ms,"
        f" server CPU {sale['serverCpuMsPerRequest']:.3f} ms/request"
    )
    hooks = sale.get("webhooks")
    if hooks:
        lag = hooks["lagMs"]
        text += (
            f"; {hooks['received']}/{hooks['expected']} delivered,"
            f" {hooks['deliveriesPerSecond']} /s, lag p50/p99 {lag['p50']:,.0f}/{lag['p99']:,.0f}"
            f" ms, last {hooks['lastReceiptAfterLastDecisionSeconds']} s after the sale;"
            f" CPU ms/delivery {hooks['cpuMsPerDelivery']}"
        )
    return text


def correct(summary: dict[str, Any]) -> bool:
    def ok(sale: dict[str, Any]) -> bool:
        hooks = sale.get("webhooks")
        return (
            sale["fiveXX"] == 0 and sale["oversell"] == 0 and sale["lost"] == 0
            and sale["outcomes"]["errors"] == 0
            and (hooks is None or (hooks["lost"] == 0 and hooks["verified"]["failed"] == 0))
        )  # fmt: skip

    return all(ok(s) for s in summary["sales"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = asyncio.run(main_async(args))
    for sale in summary["sales"]:
        print(line(sale))
    for name, ratio in summary["ratios"].items():
        print(f"{name} decisions/s: median {ratio['median']} ({ratio['min']}-{ratio['max']})")
    print(f"json: {summary['file']}")
    return 0 if correct(summary) else 1


if __name__ == "__main__":
    sys.exit(main())
