"""Released SQL is frozen: a file under migrations/sql/ becomes released when it is merged to
main, and a database migrated past its revision keeps the body it installed, whatever the file
says later. The test database is built from scratch, so an edited released file passes every
other test while production runs the old body. migrations/sql/released.sha256 holds each
released file's checksum (``sha256sum -c`` reads it); a change is a new file and a new
migration (docs/DATABASE-SCHEMA.md, "Stored procedures"). Needs no service."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from devstack import ROOT

pytestmark = pytest.mark.fast

SQL = ROOT / "migrations" / "sql"
MANIFEST = SQL / "released.sha256"


def released(manifest: Path) -> dict[str, str]:
    """Path under migrations/sql/ -> its sha256, from the manifest."""
    entries = {}
    for line in manifest.read_text().splitlines():
        digest, path = line.split(maxsplit=1)
        entries[path.lstrip("*")] = digest
    return entries


def changed(root: Path, manifest: Path) -> list[str]:
    """Released files that are gone or differ from their checksum, and files that claim a
    released revision without being in the manifest (a new body under an old number)."""
    entries = released(manifest)
    problems = []
    for path, digest in sorted(entries.items()):
        file = root / path
        if not file.exists():
            problems.append(f"{path}: removed")
        elif hashlib.sha256(file.read_bytes()).hexdigest() != digest:
            problems.append(f"{path}: changed")
    newest = max(Path(path).stem for path in entries)
    for file in sorted(root.glob("*/*.sql")):
        path = file.relative_to(root).as_posix()
        if path not in entries and file.stem <= newest:
            problems.append(f"{path}: new under released revision {file.stem}")
    return problems


def test_no_released_sql_file_changed():
    problems = changed(SQL, MANIFEST)
    assert not problems, (
        "released SQL must not change; write <function>/<new revision>.sql and a migration: "
        f"{problems}"
    )


def test_the_manifest_covers_every_revision_up_to_0007():
    revisions = {Path(path).stem for path in released(MANIFEST)}
    assert {"0002", "0003", "0004", "0005", "0006", "0007"} <= revisions


def test_the_check_sees_an_edit_a_removal_and_a_file_slipped_in(tmp_path):
    """The check is not blind: one character changed, a file gone, a file added under a
    released revision are each told apart."""
    root = tmp_path / "sql"
    shutil.copytree(SQL, root)
    manifest = root / "released.sha256"
    assert changed(root, manifest) == []
    body = root / "process_event_queue" / "0007.sql"
    body.write_text(body.read_text().replace("RETURN;", "RETURN ;", 1))
    (root / "booking_verdict" / "0005.sql").unlink()
    (root / "line_after" / "0005.sql").write_text("-- slipped in\n")
    assert changed(root, manifest) == [
        "booking_verdict/0005.sql: removed",
        "process_event_queue/0007.sql: changed",
        "line_after/0005.sql: new under released revision 0005",
    ]
