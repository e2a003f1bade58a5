"""``ebs``: database, users, invariant check and queue inspection from the command line."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path

import typer
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from common.settings import get_settings

app = typer.Typer(help="Event booking system administration.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema and data.", no_args_is_help=True)
users_app = typer.Typer(help="User accounts.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")

ROOT = Path(__file__).resolve().parent.parent


def _alembic_config():  # type: ignore[no-untyped-def]
    from alembic.config import Config

    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    return config


def _session_factory():  # type: ignore[no-untyped-def]
    from common.db import build_engine, build_sessionmaker

    return build_sessionmaker(build_engine(get_settings(), pool_size=2))


@db_app.command("create")
def db_create() -> None:
    """Create the configured database if it does not exist."""
    url = make_url(get_settings().sqlalchemy_url)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.scalar(
            text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": url.database}
        )
        if not exists:
            conn.execute(text(f'CREATE DATABASE "{url.database}"'))
            typer.echo(f"created database {url.database}")
    admin.dispose()


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply migrations (schema, constraints, indexes, stored procedures)."""
    from alembic import command

    command.upgrade(_alembic_config(), revision)
    typer.echo(f"database at {revision}")


@db_app.command("seed")
def db_seed(
    if_empty: bool = typer.Option(False, "--if-empty", help="Do nothing if users exist."),
) -> None:
    """Load the sample users, events and bookings (all passwords: password123)."""
    from common.db import session_scope
    from common.seed import is_seeded, seed

    with session_scope(_session_factory()) as session:
        if is_seeded(session):
            if if_empty:
                typer.echo("database already has data; not seeding")
                return
        counts = seed(session, bcrypt_rounds=get_settings().BCRYPT_ROUNDS)
    typer.echo(f"seeded {counts}")


@db_app.command("reset")
def db_reset(yes: bool = typer.Option(False, "--yes", help="Do not ask.")) -> None:
    """Drop everything and migrate again (all data is lost)."""
    from alembic import command

    url = make_url(get_settings().sqlalchemy_url)
    if not yes:
        typer.confirm(f"Delete ALL data in database {url.database!r}?", abort=True)
    command.downgrade(_alembic_config(), "base")
    command.upgrade(_alembic_config(), "head")
    typer.echo("database reset")


@users_app.command("create-admin")
def create_admin(
    email: str = typer.Option(..., prompt=True),
    name: str = typer.Option(..., prompt=True),
    password: str = typer.Option(..., prompt=True, hide_input=True, confirmation_prompt=True),
) -> None:
    """Create an admin account (registration through the API never makes one)."""
    from pydantic import ValidationError

    from common.db import session_scope
    from common.errors import DomainError
    from common.security import hash_password
    from common.users.schemas import UserCreate
    from common.users.service import register

    try:
        data = UserCreate.model_validate({"email": email, "name": name, "password": password})
        password_hash = hash_password(data.password, get_settings().BCRYPT_ROUNDS)
        with session_scope(_session_factory()) as session:
            user = register(session, data, password_hash=password_hash, role="admin")
            typer.echo(f"admin {user.email} created with id {user.id}")
    except (ValidationError, DomainError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@app.command("check")
def check(
    hold_grace: float | None = typer.Option(
        None,
        "--hold-grace",
        help="seconds a hold may outlive its end before it is reported (default: what the"
        " sweeper promises, SWEEP_PENDING_AFTER + SWEEP_INTERVAL)",
    ),
) -> None:
    """Verify available_seats + confirmed + held seats = capacity for every event, that nobody
    waits on a waitlist while its head fits the free seats or for more seats than the event
    holds, each event's line cursor, and that no hold outlived its end; exit 1 if not."""
    from common.bookings.procedures import (
        hold_violations,
        seat_invariant_violations,
        waitlist_violations,
    )
    from common.db import session_scope

    settings = get_settings()
    if hold_grace is None:
        hold_grace = settings.SWEEP_PENDING_AFTER + settings.SWEEP_INTERVAL
    with session_scope(_session_factory()) as session:
        violations: list[Mapping[str, object]] = [
            *seat_invariant_violations(session),
            *waitlist_violations(session),
            *hold_violations(session, hold_grace),
        ]
    if violations:
        for row in violations:
            typer.echo(f"VIOLATION {json.dumps(row, default=str)}", err=True)
        raise typer.Exit(1)
    typer.echo(
        "ok: available_seats + confirmed + held seats = capacity for every event;"
        " no waitlist stuck while seats are free or behind a request the event cannot hold;"
        " every line cursor matches its rows; no hold outlived its end"
    )


@app.command("queue")
def queue(as_json: bool = typer.Option(False, "--json")) -> None:
    """Broker queue depth and pending requests per event."""
    from common.bookings.models import Booking
    from common.db import session_scope
    from common.redis_client import build_redis
    from common.tasks import BOOKINGS_QUEUE, MAINTENANCE_QUEUE

    client = build_redis(get_settings())
    depth = {q: client.llen(q) for q in (BOOKINGS_QUEUE, MAINTENANCE_QUEUE)}
    with session_scope(_session_factory()) as session:
        rows = session.execute(
            select(
                Booking.event_id,
                func.count().filter(Booking.status == "pending"),
                func.count().filter(
                    Booking.cancel_requested_at.is_not(None),
                    Booking.status.in_(("pending", "waitlisted", "held", "confirmed")),
                ),
                func.min(Booking.created_at).filter(Booking.status == "pending"),
            )
            .where(
                (Booking.status == "pending")
                | (
                    Booking.cancel_requested_at.is_not(None)
                    & Booking.status.in_(("waitlisted", "held", "confirmed"))
                )
            )
            .group_by(Booking.event_id)
            .order_by(Booking.event_id)
        ).all()
    events = [
        {"eventId": e, "pending": p, "cancelling": c, "oldestPending": o.isoformat() if o else None}
        for e, p, c, o in rows
    ]
    if as_json:
        typer.echo(json.dumps({"queues": depth, "events": events}))
        return
    for name, n in depth.items():
        typer.echo(f"queue {name}: {n} task(s)")
    if not events:
        typer.echo("no pending requests")
    for row in events:
        typer.echo(
            f"event {row['eventId']}: {row['pending']} pending, {row['cancelling']} cancelling,"
            f" oldest {row['oldestPending']}"
        )


if __name__ == "__main__":
    sys.exit(app())
