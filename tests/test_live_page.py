"""The live page in a real browser: Debian's Chromium driven by Playwright, against real uvicorn
and a real worker. ``make test`` run as root installs Chromium when it is missing (Makefile
``chromium``); otherwise install it yourself (README, "Tests")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, ViewportSize, expect, sync_playwright
from sqlalchemy import Engine, text

from tests.conftest import RUN_DIR, ApiProcess

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
