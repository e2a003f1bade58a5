"""The stored procedures PostgreSQL holds are the files at head: migrations/sql/<function>/ holds
one whole file per revision that changed the function, and the newest one is what a database at
head runs. Editing a file without a migration that installs it fails here."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from tests.conftest import ROOT

SQL = ROOT / "migrations" / "sql"
# Functions of the public schema, without those an extension brings.
OWNED = text(
    """
SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p
WHERE p.pronamespace = CAST(:schema AS regnamespace)
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
"""
)


def head_file(function: str) -> Path:
    return max((SQL / function).glob("*.sql"), key=lambda path: path.stem)


def is_drop(path: Path) -> bool:
    code = [line for line in path.read_text().splitlines() if not line.startswith("--")]
    return " ".join(code).strip().upper().startswith("DROP FUNCTION")


def definitions(conn, schema: str) -> dict[str, str]:
    rows = conn.execute(OWNED, {"schema": schema})
    return {name: definition.replace(f"{schema}.", "", 1) for name, definition in rows}


def test_every_function_is_its_file_at_head(engine):
    functions = sorted(path.name for path in SQL.iterdir() if path.is_dir())
    live = [name for name in functions if not is_drop(head_file(name))]
    with engine.connect() as conn, conn.begin():
        held = definitions(conn, "public")
        # PostgreSQL prints both the same way: run the head files in a scratch schema (rolled
        # back) and compare what it prints for each with what the database runs.
        conn.exec_driver_sql("CREATE SCHEMA head_files")
        conn.exec_driver_sql("SET LOCAL search_path = head_files, public")
        for name in live:
            conn.exec_driver_sql(head_file(name).read_text())
        expected = definitions(conn, "head_files")
        conn.rollback()
    assert sorted(held) == live, "a function without a file, or a dropped one still installed"
    for name in live:
        assert held[name] == expected[name], f"{name} differs from {head_file(name)}"


def test_the_check_sees_a_change(engine):
    """The comparison is not blind: a body changed by one character is told apart."""
    function = "process_event_queue"
    with engine.connect() as conn, conn.begin():
        held = definitions(conn, "public")[function]
        conn.exec_driver_sql("CREATE SCHEMA head_files")
        conn.exec_driver_sql("SET LOCAL search_path = head_files, public")
        conn.exec_driver_sql(head_file(function).read_text().replace("RETURN;", "RETURN ;", 1))
        changed = definitions(conn, "head_files")[function]
        conn.rollback()
    assert changed != held
