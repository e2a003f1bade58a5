"""The decider alone, two versions side by side: the procedure at head (process_event_queue)
against an earlier file of it, installed beside it under another name, on the same database.

Each round makes two events of the same backlog (pending requests of one seat each, as in the
drain benchmark, optionally behind a waitlist) and decides both in batches of B, one
transaction per batch, alternating which goes first, timing each batch from the client. No
Celery, no publishing: what moves is the SQL. Prints decisions/s of each and their ratio.

    python -m bench.decider --against 0007 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import psycopg2

from bench.stack import add_target_args, check_targets
from devstack import ROOT, recreate_database, upgrade_database

SQL = ROOT / "migrations" / "sql" / "process_event_queue"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.decider", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--against", default="0007", help="the earlier process_event_queue file to compare")
    add("--backlog", type=int, default=20_000, help="pending requests per event and round")
    add("--seats", type=int, default=5_000, help="seats of each event")
    add("--waitlist", action="store_true", help="events with a waitlist (the rest wait)")
    add("--batch-size", type=int, default=500)
    add("--rounds", type=int, default=5)
    add("--users", type=int, default=5_000)
    add_target_args(parser)
    return parser.parse_args(argv)


def dsn(url: str) -> str:
    return url.replace("postgresql+psycopg2://", "postgresql://")


def install_old(conn, version: str) -> str:
    name = f"process_event_queue_{version}"
    body = (SQL / f"{version}.sql").read_text()
    renamed = body.replace("CREATE FUNCTION process_event_queue(", f"CREATE FUNCTION {name}(")
    with conn.cursor() as cur:
        cur.execute(renamed)
    conn.commit()
    return name


def make_event(cur, args: argparse.Namespace) -> int:
    cur.execute(
        "INSERT INTO events (name, event_date, seat_capacity, available_seats, max_seats_per_user,"
        " waitlist_enabled) VALUES ('decider bench', now() + interval '1 day', %s, %s, 10, %s)"
        " RETURNING id",
        (args.seats, args.seats, args.waitlist),
    )
    event_id = cur.fetchone()[0]
    cur.execute(
        "INSERT INTO bookings (booking_id, user_id, event_id, quantity)"
        " SELECT 'bk_dec_' || %s || '_' || g, 1 + (g - 1) %% %s, %s, 1"
        " FROM generate_series(1, %s) g",
        (event_id, args.users, event_id, args.backlog),
    )
    return event_id


def drain(conn, function: str, event_id: int, batch: int) -> tuple[float, int]:
    decided = 0
    seconds = 0.0
    with conn.cursor() as cur:
        while True:
            started = time.perf_counter()
            cur.execute(f"SELECT count(*) FROM {function}(%s, %s, 'bench')", (event_id, batch))
            n = cur.fetchone()[0]
            conn.commit()
            seconds += time.perf_counter() - started
            if n == 0:
                return seconds, decided
            decided += n


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_targets(args.database_url, args.redis_url, args.reuse_database)
    recreate_database(args.database_url)
    upgrade_database(args.database_url)
    conn = psycopg2.connect(dsn(args.database_url))
    old = install_old(conn, args.against)
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO users (email, name, password_hash)"
            " SELECT 'u' || g || '@bench', 'u', 'x' FROM generate_series(1, %s) g",
            (args.users,),
        )
    conn.commit()
    rates: dict[str, list[float]] = {"head": [], args.against: []}
    for n in range(args.rounds):
        with conn.cursor() as cur:
            events = {"head": make_event(cur, args), args.against: make_event(cur, args)}
        conn.commit()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE bookings")
        conn.autocommit = False
        order = ["head", args.against] if n % 2 == 0 else [args.against, "head"]
        for which in order:
            function = "process_event_queue" if which == "head" else old
            seconds, decided = drain(conn, function, events[which], args.batch_size)
            rates[which].append(decided / seconds)
        print(f"round {n + 1}: " + ", ".join(f"{w} {rates[w][-1]:,.0f}/s" for w in rates))
    head, before = statistics.median(rates["head"]), statistics.median(rates[args.against])
    print(
        f"median decisions/s: head {head:,.0f}, {args.against} {before:,.0f};"
        f" ratio head/{args.against} {head / before:.2f}"
    )


if __name__ == "__main__":
    main()
