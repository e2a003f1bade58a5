"""The documents under docs/ keep up with the code: every error code the code can emit, every
setting, every HTTP route and every table, column, constraint, index and procedure is named
where an operator or client developer will look for it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import inspect, text

from api import errors as api_errors
from common.errors import DomainError
from common.settings import Settings
from devstack import ROOT

DOCS = ROOT / "docs"
# Error codes written literally where a response or socket message is built.
LITERAL_CODE = re.compile(r"\b(?:error_body|_error)\(\s*\"([A-Z][A-Z0-9_]+)\"")


T = TypeVar("T")


def documented(name: str) -> str:
    return (DOCS / name).read_text()


def all_subclasses(cls: type[T]) -> set[type[T]]:
    found: set[type[T]] = set()
    for sub in cls.__subclasses__():
        found |= {sub, *all_subclasses(sub)}
    return found


def emitted_codes() -> set[str]:
    codes = {DomainError.code} | {cls.code for cls in all_subclasses(DomainError)}
    codes |= set(api_errors.HTTP_CODES.values()) | {"HTTP_ERROR"}
    for folder in ("api", "common", "worker"):
        for path in (ROOT / folder).rglob("*.py"):
            codes |= set(LITERAL_CODE.findall(path.read_text()))
    return codes


def test_the_code_collector_sees_every_kind_of_source():
    codes = emitted_codes()
    # One from the DomainError tree, one from HTTP_CODES, one written in middleware, one from
    # the health route: if the collector misses a kind, the test below proves nothing.
    assert {"SOLD_OUT", "METHOD_NOT_ALLOWED", "PAYLOAD_TOO_LARGE", "SERVICE_UNAVAILABLE"} <= codes


def test_every_error_code_is_in_error_codes_md():
    text_ = documented("ERROR-CODES.md")
    missing = sorted(code for code in emitted_codes() if f"`{code}`" not in text_)
    assert not missing, f"add to docs/ERROR-CODES.md: {missing}"


def test_every_setting_is_in_configuration_md_and_env_example():
    configuration = documented("configuration.md")
    example = (ROOT / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"`{name}`" in configuration, f"{name} missing from docs/configuration.md"
        assert re.search(rf"^(# )?{name}=", example, re.M), f"{name} missing from .env.example"


def test_every_http_route_is_in_api_md(engine):
    from api.app import create_app

    api_md = documented("API.md")
    paths = create_app().openapi()["paths"]
    routes = {f"{method.upper()} {path}" for path, ops in paths.items() for method in ops}
    routes |= {
        "GET /",
        "GET /metrics",
        "GET /live",
        "GET /dashboard",
    }  # served but kept out of the OpenAPI schema
    missing = sorted(route for route in routes if f"`{route}`" not in api_md)
    assert not missing, f"add to docs/API.md: {missing}"


def test_every_schema_object_is_in_database_schema_md(engine):
    schema_md = documented("DATABASE-SCHEMA.md")
    inspector = inspect(engine)
    names: set[str] = set()
    for table in inspector.get_table_names():
        if table == "alembic_version":
            continue
        names.add(table)
        names |= {c["name"] for c in inspector.get_columns(table)}
        names |= {i["name"] for i in inspector.get_indexes(table)}
        names |= {c["name"] for c in inspector.get_check_constraints(table)}
        names |= {c["name"] for c in inspector.get_unique_constraints(table)}
        names |= {c["name"] for c in inspector.get_foreign_keys(table)}
        names.add(inspector.get_pk_constraint(table)["name"])
    with engine.connect() as conn:
        names |= set(
            conn.scalars(
                text(
                    "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                    " WHERE n.nspname = 'public'"
                )
            )
        )
    missing = sorted(name for name in names if f"`{name}`" not in schema_md)
    assert not missing, f"add to docs/DATABASE-SCHEMA.md: {missing}"


def test_docs_this_issue_owns_exist():
    for name in ("API.md", "SETUP.md", "configuration.md", "DATABASE-SCHEMA.md",
                 "ERROR-CODES.md", "OPERATIONS.md"):  # fmt: skip
        assert Path(DOCS / name).stat().st_size > 500, name


@pytest.mark.fast
def test_every_copy_of_the_booking_rule_names_a_file_and_tests_that_exist():
    """common/bookings/RULES.md: a copy that moves, or a test renamed, breaks this index."""
    rules = (ROOT / "common" / "bookings" / "RULES.md").read_text()
    rows = [line for line in rules.splitlines() if line.startswith("| ") and "`" in line]
    assert len(rows) >= 9
    for path in re.findall(r"`((?:migrations|common|api|tests)/[\w/.]+\.(?:py|sql))", rules):
        assert (ROOT / path).is_file(), path
    for path, name in re.findall(r"`(tests/\w+\.py)::(\w+)`", rules):
        assert f"def {name}(" in (ROOT / path).read_text(), f"{path}::{name}"
    # The oracle's row names its tests bare, in tests/test_verdict.py.
    verdict = (ROOT / "tests" / "test_verdict.py").read_text()
    [oracle] = [row for row in rows if row.startswith("| Python oracle")]
    for test in re.findall(r"`(test_\w+)`", oracle):
        assert f"def {test}(" in verdict, test
