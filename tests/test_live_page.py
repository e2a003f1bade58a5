"""The live page in a real browser: Debian's Chromium driven by Playwright, against real uvicorn
and a real worker. ``make test`` run as root installs Chromium when it is missing (Makefile
``chromium``); otherwise install it yourself (README, "Tests")."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, ViewportSize, expect, sync_playwright
from sqlalchemy import Engine, text

from devstack import RedisServer
from tests.conftest import RUN_DIR, ApiProcess, WorkerProcess

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 30_000  # a hang guard for each expectation, not a measurement


@pytest.fixture
def page() -> Iterator[Page]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: this test drives Debian's Chromium. Install it with "
            "`sudo apt-get install chromium` (`make test` does so when run as root); "
            "Playwright's own browser download is not used.",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page()
        finally:
            browser.close()


@pytest.fixture
def api(engine: Engine, worker: Any) -> Iterator[ApiProcess]:
    proc = ApiProcess("api-live-page").start()
    yield proc
    proc.stop()


@pytest.fixture
def warning_stack(engine: Engine, private_broker: dict[str, str]) -> Iterator[ApiProcess]:
    """An API and a worker of the test's own (a private Redis) that warn 4 s before a hold
    ends: the session's worker warns 60 s before, longer than a test should wait."""
    server = RedisServer().start()
    env = {**private_broker, "REDIS_URL": server.url}
    worker = WorkerProcess("live-page-holds-worker", **env, HOLD_WARNING_SECONDS="4")  # type: ignore[arg-type]
    api = ApiProcess("live-page-holds-api", **env)
    try:
        worker.start()
        api.start()
        yield api
    finally:
        api.stop()
        worker.stop()
        server.close()


def log_in(page: Page, url: str, email: str) -> None:
    page.goto(url)
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("password123")
    page.get_by_role("button", name="Log in").click()


def test_live_page_shows_seats_drop_and_the_booking_decided(
    page: Page, api, make_user, make_event, token_for
):
    make_user(email="fan@example.com")
    other = make_user()
    event = make_event(capacity=20, max_per_user=10, name="Jazz Night")

    log_in(page, f"{api.url}/live", "fan@example.com")
    row = page.locator(f'tr[data-event-id="{event.id}"]')
    expect(page.locator("#connection")).to_have_text("live", timeout=WAIT_MS)
    expect(row.locator(".available")).to_have_text("20", timeout=WAIT_MS)

    page.get_by_label("Seats for Jazz Night", exact=True).fill("3")
    page.get_by_role("button", name="Book: Jazz Night").click()
    # The worker decides it; the page hears the seat count and the decision on its socket.
    expect(row.locator(".available")).to_have_text("17", timeout=WAIT_MS)
    mine = page.locator("#bookings tr")
    expect(mine).to_have_count(1, timeout=WAIT_MS)
    expect(mine.locator(".status")).to_have_text("confirmed", timeout=WAIT_MS)
    expect(mine.locator(".event")).to_have_text("Jazz Night")
    expect(page.locator("#message")).to_contain_text("confirmed", timeout=WAIT_MS)

    # Someone else books elsewhere: the count moves without a reload, no status of theirs shows.
    response = httpx.post(
        f"{api.url}/api/bookings",
        json={"eventId": event.id, "quantity": 5},
        headers={"Authorization": f"Bearer {token_for(other)}", "Prefer": "wait=30"},
        timeout=60,
    )
    assert response.status_code == 201, response.text
    expect(row.locator(".available")).to_have_text("12", timeout=WAIT_MS)
    expect(mine).to_have_count(1)

    # More than the event allows per person: said in words, nothing sent.
    page.get_by_label("Seats for Jazz Night", exact=True).fill("11")
    page.get_by_role("button", name="Book: Jazz Night").click()
    expect(page.locator("#message")).to_have_text(
        "Jazz Night allows at most 10 seats per person.", timeout=WAIT_MS
    )
    expect(mine).to_have_count(1)


def test_a_sold_out_event_offers_its_waitlist_or_nothing(
    page: Page, api, engine, make_user, make_event
):
    make_user(email="late@example.com")
    with_list = make_event(capacity=1, available=0, name="Sold Out With List")
    without = make_event(capacity=1, available=0, name="Sold Out Without")
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE events SET waitlist_enabled = true WHERE id = :id"), {"id": with_list.id}
        )
    log_in(page, f"{api.url}/live", "late@example.com")
    expect(page.locator("#connection")).to_have_text("live", timeout=WAIT_MS)
    listed = page.locator(f'tr[data-event-id="{with_list.id}"]')
    unlisted = page.locator(f'tr[data-event-id="{without.id}"]')
    expect(listed.get_by_role("button")).to_have_text("Join the waitlist", timeout=WAIT_MS)
    expect(unlisted.get_by_role("button")).to_have_count(0)
    expect(unlisted.locator(".sold-out")).to_have_text("Sold out")


def test_a_buyer_waits_moves_up_is_promoted_and_cancels_by_clicking(
    page: Page, api, engine, make_user, make_event, token_for
):
    buyer = make_user(email="waiting@example.com")
    holder, ahead = make_user(), make_user()
    event = make_event(capacity=2, max_per_user=2, name="Sold Out Show")
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE events SET waitlist_enabled = true WHERE id = :id"), {"id": event.id}
        )

    def request(method: str, path: str, who: Any, body: Any = None) -> dict[str, Any]:
        response = httpx.request(
            method,
            f"{api.url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {token_for(who)}", "Prefer": "wait=30"},
            timeout=60,
        )
        assert response.is_success, response.text
        return response.json()["data"]

    held = request("POST", "/api/bookings", holder, {"eventId": event.id, "quantity": 2})
    assert held["status"] == "confirmed"
    first = request("POST", "/api/bookings", ahead, {"eventId": event.id, "quantity": 1})
    assert first["status"] == "waitlisted"

    log_in(page, f"{api.url}/live", buyer.email)
    row = page.locator(f'tr[data-event-id="{event.id}"]')
    expect(page.locator("#connection")).to_have_text("live", timeout=WAIT_MS)
    expect(row.locator(".available")).to_have_text("0", timeout=WAIT_MS)

    page.get_by_role("button", name="Join the waitlist: Sold Out Show").click()
    mine = page.locator("#bookings tr")
    expect(mine).to_have_count(1, timeout=WAIT_MS)
    expect(mine.locator(".status")).to_have_text("waitlisted", timeout=WAIT_MS)
    expect(mine.locator(".position")).to_have_text("2nd in line", timeout=WAIT_MS)
    expect(row.locator(".waitlist")).to_have_text("2", timeout=WAIT_MS)
    page.screenshot(path=str(RUN_DIR / "live-page-waitlist.png"), full_page=True)
    page.set_viewport_size(ViewportSize(width=390, height=844))
    page.screenshot(path=str(RUN_DIR / "live-page-phone.png"), full_page=True)

    # The one ahead leaves: the buyer moves up without a reload.
    request("DELETE", f"/api/bookings/{first['bookingId']}", ahead)
    expect(mine.locator(".position")).to_have_text("1st in line", timeout=WAIT_MS)
    expect(row.locator(".waitlist")).to_have_text("1", timeout=WAIT_MS)

    # Seats come back: the buyer is promoted, told so in words, the waitlist empties.
    request("DELETE", f"/api/bookings/{held['bookingId']}", holder)
    expect(mine.locator(".status")).to_have_text("confirmed", timeout=WAIT_MS)
    expect(mine.locator(".position")).to_have_text("", timeout=WAIT_MS)
    expect(page.locator("#message")).to_contain_text("came free", timeout=WAIT_MS)
    expect(row.locator(".available")).to_have_text("1", timeout=WAIT_MS)

    # The buyer cancels with the keyboard: the seat goes back, the button goes away.
    cancel = mine.get_by_role("button", name="Cancel 1 seat for Sold Out Show")
    cancel.focus()
    page.keyboard.press("Enter")
    expect(mine.locator(".status")).to_have_text("cancelled", timeout=WAIT_MS)
    expect(row.locator(".available")).to_have_text("2", timeout=WAIT_MS)
    expect(mine.get_by_role("button")).to_have_count(0)
    with engine.connect() as conn:
        status = conn.scalar(
            text("SELECT status FROM bookings WHERE event_id = :id AND user_id = :u"),
            {"id": event.id, "u": buyer.id},
        )
    assert status == "cancelled"


def test_a_buyer_sees_a_hold_count_down_and_confirms_it_by_clicking(
    page: Page, api, engine, make_user, hold_event
):
    buyer = make_user(email="holder@example.com")
    event = hold_event(seconds=600, capacity=10, name="Held Gig")

    log_in(page, f"{api.url}/live", buyer.email)
    row = page.locator(f'tr[data-event-id="{event.id}"]')
    expect(page.locator("#connection")).to_have_text("live", timeout=WAIT_MS)
    page.get_by_label("Seats for Held Gig", exact=True).fill("2")
    page.get_by_role("button", name="Book: Held Gig").click()

    mine = page.locator("#bookings tr")
    expect(mine.locator(".status")).to_have_text("held for you", timeout=WAIT_MS)
    expect(row.locator(".available")).to_have_text("8", timeout=WAIT_MS)  # held seats are taken
    countdown = mine.locator(".countdown")
    expect(countdown).to_have_text(re.compile(r"^(10:00|9:[0-5]\d) left$"), timeout=WAIT_MS)
    first = countdown.inner_text()
    expect(countdown).not_to_have_text(first, timeout=WAIT_MS)  # it counts down on its own
    expect(page.locator("#message")).to_contain_text("confirm to keep them", timeout=WAIT_MS)
    page.screenshot(path=str(RUN_DIR / "live-page-hold.png"), full_page=True)
    page.set_viewport_size(ViewportSize(width=390, height=844))
    page.screenshot(path=str(RUN_DIR / "live-page-hold-phone.png"), full_page=True)

    mine.get_by_role("button", name="Confirm 2 seats for Held Gig").click()
    expect(mine.locator(".status")).to_have_text("confirmed", timeout=WAIT_MS)
    expect(countdown).to_have_text("")
    expect(mine.get_by_role("button", name="Confirm 2 seats for Held Gig")).to_have_count(0)
    expect(mine.get_by_role("button", name="Cancel 2 seats for Held Gig")).to_be_visible()
    expect(row.locator(".available")).to_have_text("8")
    with engine.connect() as conn:
        status = conn.scalar(
            text("SELECT status FROM bookings WHERE event_id = :id"), {"id": event.id}
        )
    assert status == "confirmed"


def test_a_hold_left_alone_warns_then_expires(
    page: Page, warning_stack: ApiProcess, engine, make_user, hold_event
):
    buyer = make_user(email="slow@example.com")
    event = hold_event(seconds=8, capacity=5, name="Quick Hold")

    log_in(page, f"{warning_stack.url}/live", buyer.email)
    row = page.locator(f'tr[data-event-id="{event.id}"]')
    expect(page.locator("#connection")).to_have_text("live", timeout=WAIT_MS)
    page.get_by_role("button", name="Book: Quick Hold").click()
    mine = page.locator("#bookings tr")
    expect(mine.locator(".status")).to_have_text("held for you", timeout=WAIT_MS)
    expect(row.locator(".available")).to_have_text("4", timeout=WAIT_MS)

    # hold_expiring: said in the live region, and the countdown is marked.
    expect(page.locator("#message")).to_contain_text(
        "Hurry: your hold on Quick Hold ends in", timeout=WAIT_MS
    )
    expect(mine.locator(".countdown.ending")).to_have_count(1)

    # Left alone, it expires: the row says so, the seat is back, the buttons are gone.
    expect(mine.locator(".status")).to_have_text("expired", timeout=WAIT_MS)
    expect(row.locator(".available")).to_have_text("5", timeout=WAIT_MS)
    expect(mine.get_by_role("button")).to_have_count(0)
    expect(page.locator("#message")).to_contain_text("ran out before it was confirmed")
    with engine.connect() as conn:
        status = conn.scalar(
            text("SELECT status FROM bookings WHERE event_id = :id"), {"id": event.id}
        )
    assert status == "expired"


def test_confirming_after_the_hold_ended_says_so_in_words(
    page: Page, api, engine, make_user, hold_event
):
    buyer = make_user(email="late-payer@example.com")
    event = hold_event(seconds=600, capacity=5, name="Late Payer Gig")
    log_in(page, f"{api.url}/live", buyer.email)
    expect(page.locator("#connection")).to_have_text("live", timeout=WAIT_MS)
    page.get_by_role("button", name="Book: Late Payer Gig").click()
    mine = page.locator("#bookings tr")
    expect(mine.locator(".status")).to_have_text("held for you", timeout=WAIT_MS)

    # The database's clock passes the hold's end before its expiry runs (a page whose clock is
    # behind, or a late click): the server refuses with HOLD_EXPIRED and the page says so.
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE bookings SET expires_at = now() - interval '1 second' WHERE event_id = :id"
            ),
            {"id": event.id},
        )
    mine.get_by_role("button", name="Confirm 1 seat for Late Payer Gig").click()
    expect(page.locator("#message")).to_contain_text(
        "Too late to confirm Late Payer Gig: the hold ran out", timeout=WAIT_MS
    )
    expect(mine.locator(".status")).to_have_text("expired")
    expect(mine.get_by_role("button")).to_have_count(0)
