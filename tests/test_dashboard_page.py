"""The organiser's page in Debian's Chromium (as tests/test_live_page.py), against real uvicorn
and a real worker: a sale runs while it is open, and it ends on the database's figures."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from playwright.sync_api import Page, ViewportSize, expect
from sqlalchemy import text

from tests.conftest import RUN_DIR
from tests.test_live_page import WAIT_MS, api, log_in, page  # noqa: F401  (fixtures)

PHONE = ViewportSize(width=390, height=844)
DESKTOP = ViewportSize(width=1280, height=720)


def test_a_sale_watched_live_ends_on_the_databases_counts(
    page: Page,  # noqa: F811
    api,  # noqa: F811
    engine,
    make_user,
    make_event,
    token_for,
):
    admin = make_user(role="admin", email="organiser@example.com")
    sale = make_event(capacity=40, max_per_user=4, name="Flash Sale Gala", created_by=admin.id)
    for n in range(12):
        make_event(name=f"Matinee {n}", capacity=50)
    buyers = [make_user() for _ in range(30)]

    log_in(page, f"{api.url}/dashboard", admin.email)
    expect(page.locator("#connection")).to_have_text("live", timeout=WAIT_MS)
    expect(page.locator("#focus-title")).to_have_text("Flash Sale Gala", timeout=WAIT_MS)
    expect(page.locator("#range")).to_have_text("1–10 of 13")
    expect(page.locator("#sold")).to_have_text("0")

    def buy(who: Any) -> int:
        response = httpx.post(
            f"{api.url}/api/bookings",
            json={"eventId": sale.id, "quantity": 2},
            headers={"Authorization": f"Bearer {token_for(who)}", "Prefer": "wait=30"},
            timeout=60,
        )
        assert response.status_code in (201, 409), response.text
        return response.status_code

    # The sale in two waves, the page open all along; a screenshot between them, once the
    # rates chart has a few seconds to show (a wait for the picture, not a time limit).
    page.wait_for_function("() => state.rates[0].length >= 4", timeout=WAIT_MS)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(buy, buyers[:12]))
        expect(page.locator("#sold")).to_have_text("24", timeout=WAIT_MS)
        page.wait_for_function("() => Math.max(...state.rates[1]) > 0", timeout=WAIT_MS)
        page.screenshot(path=str(RUN_DIR / "dashboard-mid-sale.png"), full_page=True)
        page.set_viewport_size(PHONE)
        page.screenshot(path=str(RUN_DIR / "dashboard-mid-sale-phone.png"), full_page=True)
        page.set_viewport_size(DESKTOP)
        list(pool.map(buy, buyers[12:]))

    with engine.connect() as conn:
        sold, left = conn.execute(
            text(
                "SELECT coalesce(sum(quantity) FILTER (WHERE status = 'confirmed'), 0),"
                " (SELECT available_seats FROM events WHERE id = :id)"
                " FROM bookings WHERE event_id = :id"
            ),
            {"id": sale.id},
        ).one()
    assert (sold, left) == (40, 0)
    expect(page.locator("#sold")).to_have_text(str(sold), timeout=WAIT_MS)
    expect(page.locator("#left")).to_have_text(str(left), timeout=WAIT_MS)
    chart = page.locator("#sales-chart")
    expect(chart).to_have_attribute("data-last-sold", str(sold), timeout=WAIT_MS)
    row = page.locator(f'#events tr[data-event-id="{sale.id}"]')
    expect(row.locator(".sold")).to_have_text(str(sold))
    expect(page.locator("#decisions tr").first).to_be_visible()

    # Reopened after the sale, the snapshot alone draws the same last point.
    page.reload()
    expect(page.locator("#focus-title")).to_have_text("Flash Sale Gala", timeout=WAIT_MS)
    expect(chart).to_have_attribute("data-last-sold", str(sold), timeout=WAIT_MS)

    # Searching and paging, by keyboard.
    search = page.get_by_label("Search by name")
    search.fill("matinee 11")
    search.press("Enter")
    expect(page.locator("#events tr")).to_have_count(1, timeout=WAIT_MS)
    expect(page.locator("#focus-title")).to_have_text("Matinee 11", timeout=WAIT_MS)
    search.fill("")
    search.press("Enter")
    page.get_by_role("button", name="Next").click()
    expect(page.locator("#range")).to_have_text("11–13 of 13", timeout=WAIT_MS)

    page.set_viewport_size(PHONE)
    page.get_by_role("button", name="Previous").click()
    page.get_by_role("button", name="Flash Sale Gala").click()
    expect(chart).to_have_attribute("data-last-sold", str(sold), timeout=WAIT_MS)
    page.screenshot(path=str(RUN_DIR / "dashboard-phone.png"), full_page=True)


def test_a_buyer_sees_no_one_elses_dashboard(page: Page, api, make_user, make_event):  # noqa: F811
    make_user(email="buyer@example.com")
    make_event(name="Someone Else's Show")
    log_in(page, f"{api.url}/dashboard", "buyer@example.com")
    expect(page.locator("#message")).to_have_text(
        "You have no events to watch yet: the events you create appear here.", timeout=WAIT_MS
    )
    expect(page.locator("#events tr")).to_have_count(0)
    expect(page.locator("#focus")).to_be_hidden()


def test_holds_and_webhook_deliveries_are_shown_and_holds_followed_live(
    page: Page,  # noqa: F811
    api,  # noqa: F811
    engine,
    make_user,
    hold_event,
    token_for,
):
    admin = make_user(role="admin", email="holds-organiser@example.com")
    sale = hold_event(seconds=8, capacity=20, max_per_user=2, name="Held Sale", created_by=admin.id)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO webhook_endpoints (owner_id, url, enabled, disabled_reason, secret)"
                " VALUES (:o, 'https://tickets.example/hooks', false,"
                " '12 consecutive failed attempts; the last: HTTP 500', 'whsec_x')"
            ),
            {"o": admin.id},
        )
    log_in(page, f"{api.url}/dashboard", admin.email)
    expect(page.locator("#connection")).to_have_text("live", timeout=WAIT_MS)
    expect(page.locator("#focus-title")).to_have_text("Held Sale", timeout=WAIT_MS)
    expect(page.locator("#holds-outstanding")).to_have_text("0")
    hook = page.locator("#webhook-rows tr")
    expect(hook).to_have_count(1)
    expect(hook.locator(".url")).to_have_text("https://tickets.example/hooks")
    expect(hook.locator(".state")).to_have_text(
        "disabled: 12 consecutive failed attempts; the last: HTTP 500"
    )

    def buy(who: Any) -> None:
        response = httpx.post(
            f"{api.url}/api/bookings",
            json={"eventId": sale.id, "quantity": 2},
            headers={"Authorization": f"Bearer {token_for(who)}", "Prefer": "wait=30"},
            timeout=60,
        )
        assert response.json()["data"]["status"] == "held", response.text

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(buy, [make_user() for _ in range(5)]))
    # Held from the stream, without a reload; then left alone, they expire, also from the stream.
    expect(page.locator("#holds-new")).to_have_text("5", timeout=WAIT_MS)
    expect(page.locator("#holds-outstanding")).to_have_text("5")
    expect(page.locator("#sold")).to_have_text("10")
    expect(page.locator("#holds-expiring")).to_have_text("5 holds")  # 8 s holds: all end soon
    expect(page.locator("#decisions tr").first.locator("td").nth(2)).not_to_have_text("0")
    page.screenshot(path=str(RUN_DIR / "dashboard-holds.png"), full_page=True)
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(RUN_DIR / "dashboard-holds-phone.png"), full_page=True)
    page.set_viewport_size(DESKTOP)
    expect(page.locator("#holds-expired")).to_have_text("5", timeout=WAIT_MS)
    expect(page.locator("#holds-outstanding")).to_have_text("0")
    expect(page.locator("#sold")).to_have_text("0", timeout=WAIT_MS)
    with engine.connect() as conn:
        expired = conn.scalar(
            text("SELECT count(*) FROM bookings WHERE event_id = :id AND status = 'expired'"),
            {"id": sale.id},
        )
    assert expired == 5
    # Read again, the snapshot agrees: nothing outstanding.
    page.reload()
    expect(page.locator("#focus-title")).to_have_text("Held Sale", timeout=WAIT_MS)
    expect(page.locator("#holds-outstanding")).to_have_text("0")
    expect(page.locator("#holds-seats")).to_have_text("0")
