"""The flash-sale benchmark on a tiny case: its correctness figures, never its timings.

It runs as a user would run it (``python -m bench.flash_sale``), against the test database and
Redis db and this session's real worker, with its own uvicorn.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from devstack import ROOT
from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL

pytestmark = pytest.mark.slow

SEATS = 20
DRAIN_SEATS = 50


def test_flash_sale_tool_reports_no_oversell_no_loss_no_5xx(engine, worker, tmp_path):
    argv = [sys.executable, "-m", "bench.flash_sale",
            "--clients", "8", "--requests", "60", "--seats", str(SEATS), "--users", "30",
            "--ws-subscribers", "2", "--drain-backlog", "200", "--drain-seats", str(DRAIN_SEATS),
            "--api-workers", "1", "--wait", "20", "--warmup", "20",
            "--database-url", TEST_DATABASE_URL, "--redis-url", TEST_REDIS_URL,
            "--reuse-database", "--no-worker", "--no-progress", "--out", str(tmp_path)]  # fmt: skip
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "decisions/s" in run.stdout  # the table was printed

    [path] = tmp_path.glob("flash-sale-*.json")
    summary = json.loads(path.read_text())
    assert list(tmp_path.glob("flash-sale-*.png"))
    for design in ("queued", "sync"):
        result = summary["designs"][design]
        assert result["requests"] == 60
        assert result["fiveXX"] == 0, result["httpStatus"]
        assert result["oversell"] == 0
        assert result["lost"] == 0
        assert result["outcomes"]["errors"] == 0
        # More requests than seats: every seat sold, and the clients were told exactly that.
        assert result["confirmedSeats"] == SEATS
        assert result["outcomes"]["confirmed"] == SEATS
        assert result["outcomes"]["rejected"] == 60 - SEATS
        assert result["confirmedMatchesDatabase"]

    ws = summary["designs"]["queued"]["websocket"]
    if ws["available"]:
        assert ws["correct"] == ws["subscribers"] == 2, ws
        assert ws["finalSeats"] == [0]
    else:
        assert ws["reason"]

    drain = summary["drain"]
    assert drain["worker"]["left"] == 0
    assert drain["worker"]["confirmedSeats"] == DRAIN_SEATS
    assert drain["singleBookingLoop"]["confirmedSeats"] == DRAIN_SEATS
    assert (
        drain["worker"]["invariantViolations"]
        == drain["singleBookingLoop"]["invariantViolations"]
        == 0
    )


def test_many_events_tool_decides_every_request_of_every_event(engine, tmp_path):
    argv = [sys.executable, "-m", "bench.many_events",
            "--events", "3", "--seats", "10", "--requests", "25", "--users", "40",
            "--workers", "1,2", "--database-url", TEST_DATABASE_URL, "--redis-url", TEST_REDIS_URL,
            "--reuse-database", "--out", str(tmp_path)]  # fmt: skip
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr

    [path] = tmp_path.glob("many-events-*.json")
    runs = json.loads(path.read_text())["runs"]
    assert [r["workers"] for r in runs] == [1, 2]
    for result in runs:
        assert result["left"] == 0
        assert result["decisions"] == 3 * 25
        assert result["confirmedSeats"] == result["capacity"] == 3 * 10
        assert result["invariantViolations"] == 0


def test_waitlist_tool_promotes_the_head_of_the_line_and_tells_each_buyer(engine, worker, tmp_path):
    argv = [sys.executable, "-m", "bench.waitlist",
            "--clients", "8", "--requests", "60", "--seats", str(SEATS), "--margin", "3",
            "--cancel-rate", "10", "--api-workers", "1", "--wait", "20",
            "--database-url", TEST_DATABASE_URL, "--redis-url", TEST_REDIS_URL,
            "--reuse-database", "--no-worker", "--no-progress", "--out", str(tmp_path)]  # fmt: skip
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "promotion" in run.stdout  # the table was printed

    [path] = tmp_path.glob("waitlist-*.json")
    result = json.loads(path.read_text())["result"]
    assert all(result["checks"].values()), result["checks"]
    assert result["sale"]["byStatus"] == {"confirmed": SEATS, "waitlisted": 60 - SEATS}
    assert result["fiveXX"] == 0
    # S/10 cancellations, each seat given to the next in line, who heard it on their socket.
    promotion = result["promotion"]
    assert promotion["promoted"] == promotion["toldOnSocket"] == SEATS // 10
    assert promotion["unpaired"] == 0
    assert promotion["fromCommitMs"]["p50"] >= 0
    assert result["final"]["byStatus"] == {
        "confirmed": SEATS,
        "cancelled": SEATS // 10,
        "waitlisted": 60 - SEATS - SEATS // 10,
    }


def test_webhooks_tool_delivers_every_message_of_each_hooks_sale(engine, worker, tmp_path):
    argv = [sys.executable, "-m", "bench.webhooks",
            "--clients", "8", "--requests", "60", "--seats", str(SEATS), "--rounds", "2",
            "--api-workers", "1", "--wait", "20", "--warmup", "20", "--hook-concurrency", "1",
            "--database-url", TEST_DATABASE_URL, "--redis-url", TEST_REDIS_URL,
            "--reuse-database", "--no-worker", "--no-progress", "--out", str(tmp_path)]  # fmt: skip
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "hooks/off decisions/s" in run.stdout  # the ratios were printed

    [path] = tmp_path.glob("webhooks-*.json")
    summary = json.loads(path.read_text())
    assert [s["variant"] for s in summary["sales"]] == [
        "off", "idle", "hooks", "hooks", "idle", "off"
    ]  # fmt: skip
    for sale in summary["sales"]:
        assert (sale["fiveXX"], sale["oversell"], sale["lost"]) == (0, 0, 0)
        assert sale["outcomes"]["confirmed"] == SEATS
        if sale["variant"] == "hooks":
            hooks = sale["webhooks"]
            # Every decision (sold or refused by the decider) to both endpoints, verified.
            assert hooks["expected"] >= 2 * SEATS
            assert hooks["received"] == hooks["expected"] == hooks["verified"]["verified"]
            assert hooks["verified"]["failed"] == 0


def test_holds_tool_expires_every_hold_and_sells_with_holds_on_and_off(engine, worker, tmp_path):
    argv = [sys.executable, "-m", "bench.holds",
            "--holds", "60", "--waitlisted", "10", "--sockets", "5", "--lead", "2",
            "--clients", "8", "--requests", "60", "--seats", str(SEATS), "--pairs", "2",
            "--warmup", "8", "--api-workers", "1", "--wait", "20",
            "--database-url", TEST_DATABASE_URL, "--redis-url", TEST_REDIS_URL,
            "--reuse-database", "--no-worker", "--no-progress", "--out", str(tmp_path)]  # fmt: skip
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "expiresAt" in run.stdout  # the table was printed

    [path] = tmp_path.glob("holds-*.json")
    summary = json.loads(path.read_text())
    expiry = summary["expiry"]
    assert all(expiry["checks"].values()), expiry["checks"]
    # Every hold expired, the ten waiting held in their turn, each told on their socket.
    assert expiry["final"]["byStatus"] == {"expired": 60, "held": 10}
    assert expiry["expiryToChannelMs"]["p50"] >= 0
    pairs = summary["sale"]["pairs"]
    assert [p["first"] for p in pairs] == ["off", "on"]
    for pair in pairs:
        # Refusals are mostly answered at intake, with no row: only the seats are counted.
        assert pair["on"]["byStatus"]["held"] == SEATS and "confirmed" not in pair["on"]["byStatus"]
        assert (
            pair["off"]["byStatus"]["confirmed"] == SEATS and "held" not in pair["off"]["byStatus"]
        )
        assert pair["on"]["ok"] and pair["off"]["ok"]
