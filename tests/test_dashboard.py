"""The organiser's snapshot (``GET /api/dashboard``): who sees which events, search and paging,
and a sale's history as the chart draws it, ending at the seats the database holds now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text


def add_booking(
    engine: Engine,
    event_id: int,
    user_id: int,
    quantity: int,
    status: str,
    decided_at: datetime | None,
    cancelled_at: datetime | None = None,
) -> None:
    """A booking as the decider leaves it, at a chosen time (the history the chart draws)."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO bookings (booking_id, user_id, event_id, quantity, status, reason,"
                " decided_at, cancelled_at) VALUES (gen_random_uuid()::text, :u, :e, :q, :s,"
                " :r, :d, :c)"
            ),
            {
                "u": user_id,
                "e": event_id,
                "q": quantity,
                "s": status,
                "r": "sold_out" if status == "rejected" else None,
                "d": decided_at,
                "c": cancelled_at,
            },
        )


def test_the_sales_history_ends_at_the_seats_sold_now(client, engine, make_user, make_event, auth):
    admin, buyer = make_user(role="admin"), make_user()
    event = make_event(capacity=10, available=5, name="Opera")
    t0 = datetime(2030, 1, 1, 12, tzinfo=UTC)
    at = [t0 + timedelta(seconds=s) for s in range(6)]
    add_booking(engine, event.id, buyer.id, 3, "confirmed", at[0])
    add_booking(engine, event.id, buyer.id, 2, "cancelled", at[1], cancelled_at=at[3])
    add_booking(engine, event.id, buyer.id, 4, "confirmed", at[2])
    add_booking(engine, event.id, buyer.id, 1, "rejected", at[2])
    # Cancelled while it waited: never held a seat (decided_at is its cancellation).
    add_booking(engine, event.id, buyer.id, 6, "cancelled", at[4], cancelled_at=at[4])
    add_booking(engine, event.id, buyer.id, 2, "waitlisted", None)
    with engine.begin() as conn:
        conn.execute(text("UPDATE events SET available_seats = 3 WHERE id = :id"), {"id": event.id})

    response = client.get("/api/dashboard", headers=auth(admin))
    assert response.status_code == 200, response.text
    focus = response.json()["data"]["focus"]
    assert focus["event"]["name"] == "Opera"
    assert [p["sold"] for p in focus["sales"]] == [3, 5, 9, 7]
    assert focus["sales"][-1]["sold"] == focus["event"]["sold"] == 10 - 3
    batches = [(b["confirmed"], b["rejected"], b["cancelled"]) for b in focus["decisions"]]
    assert batches == [(0, 0, 1), (0, 0, 1), (1, 1, 0), (1, 0, 0), (1, 0, 0)]


def test_a_creator_sees_only_their_events_and_not_anyone_elses(client, make_user, make_event, auth):
    creator, stranger, admin = make_user(), make_user(), make_user(role="admin")
    mine = make_event(created_by=creator.id, name="Mine")
    theirs = make_event(name="Theirs")

    listed = client.get("/api/dashboard", headers=auth(creator)).json()["data"]
    assert [e["name"] for e in listed["events"]] == ["Mine"]
    assert listed["focus"]["event"]["id"] == mine.id

    refused = client.get(f"/api/dashboard?focus={theirs.id}", headers=auth(creator))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "FORBIDDEN"
    empty = client.get("/api/dashboard", headers=auth(stranger)).json()["data"]
    assert empty["events"] == [] and empty["focus"] is None and empty["total"] == 0
    everything = client.get("/api/dashboard", headers=auth(admin)).json()["data"]
    assert everything["total"] == 2
    assert client.get("/api/dashboard").status_code == 401
    missing = client.get("/api/dashboard?focus=999999", headers=auth(admin))
    assert missing.status_code == 404


def test_thousands_of_events_are_searched_and_paged(client, engine, make_user, auth):
    admin = make_user(role="admin")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO events (name, event_date, seat_capacity, available_seats)"
                " SELECT 'Show ' || n, now() + n * interval '1 minute', 100, 100"
                " FROM generate_series(1, 3000) n"
            )
        )
    page = client.get("/api/dashboard?limit=10&offset=2990", headers=auth(admin)).json()["data"]
    assert page["total"] == 3000 and not page["hasMore"]
    assert [e["name"] for e in page["events"]][-1] == "Show 3000"
    found = client.get("/api/dashboard?q=show 2999", headers=auth(admin)).json()["data"]
    assert [e["name"] for e in found["events"]] == ["Show 2999"]
    assert found["focus"]["event"]["name"] == "Show 2999"
    too_many = client.get("/api/dashboard?limit=21", headers=auth(admin))
    assert too_many.status_code == 400  # a page beyond what one socket may follow


def test_pages_run_only_our_own_files(client):
    """The pages keep a token in the browser: no framing, no inline script or style, and
    nothing fetched or run from anywhere but our own origin."""
    for path in ("/live", "/dashboard"):
        page = client.get(path)
        assert page.status_code == 200
        assert page.headers["x-frame-options"] == "DENY"
        policy = dict(
            (part.strip().split(" ", 1) + [""])[:2]
            for part in page.headers["content-security-policy"].split(";")
        )
        assert policy["default-src"] == "'none'"
        assert policy["script-src"] == "'self'"
        assert policy["style-src"] == "'self'"
        assert policy["connect-src"] == "'self'"
        assert policy["frame-ancestors"] == "'none'"
        assert "<script>" not in page.text and "<style" not in page.text
        assert " style=" not in page.text and " on" + "click=" not in page.text
    chart = client.get("/static/vendor/uPlot.iife.min.js")
    assert chart.status_code == 200 and chart.headers["content-type"].startswith("text/javascript")
    assert "MIT" in client.get("/static/vendor/uPlot.LICENSE").text
    assert client.get("/static/../common/settings.py").status_code == 404


def test_the_snapshot_shows_holds_outstanding_and_expiring(
    client, engine, make_user, hold_event, auth
):
    admin, buyer = make_user(role="admin"), make_user()
    event = hold_event(seconds=900, capacity=20, available=11)
    now = datetime.now(UTC)
    for quantity, ends_in in ((2, 30), (3, 45), (4, 600)):
        add_booking(engine, event.id, buyer.id, quantity, "held", now)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE bookings SET expires_at = now() + make_interval(secs => :s)"
                    " WHERE event_id = :e AND quantity = :q"
                ),
                {"s": ends_in, "e": event.id, "q": quantity},
            )
    add_booking(engine, event.id, buyer.id, 5, "expired", now)  # over: not outstanding

    holds = client.get("/api/dashboard", headers=auth(admin)).json()["data"]["focus"]["holds"]
    assert holds["holdSeconds"] == 900
    assert (holds["bookings"], holds["seats"]) == (3, 9)
    assert (holds["expiringBookings"], holds["expiringSeats"], holds["soonSeconds"]) == (2, 5, 60)
    soonest = datetime.fromisoformat(holds["nextExpiresAt"])
    assert now + timedelta(seconds=25) < soonest < now + timedelta(seconds=35)


def test_the_snapshot_shows_the_callers_webhook_deliveries_for_the_event(
    client, engine, make_user, make_event, auth
):
    creator, other = make_user(), make_user()
    event = make_event(created_by=creator.id, name="Hooked")
    elsewhere = make_event(created_by=creator.id, name="Other show")

    def endpoint(owner: int, event_id: int | None, reason: str | None = None) -> int:
        with engine.begin() as conn:
            return conn.scalar(
                text(
                    "INSERT INTO webhook_endpoints (owner_id, url, event_id, enabled,"
                    " disabled_reason, secret) VALUES (:o, :u, :e, :en, :r, 'whsec_x')"
                    " RETURNING id"
                ),
                {
                    "o": owner,
                    "u": f"https://hooks.example/{owner}/{event_id}",
                    "e": event_id,
                    "en": reason is None,
                    "r": reason,
                },
            )

    every = endpoint(creator.id, None)
    gone = endpoint(creator.id, event.id, reason="410 Gone: the receiver asked to stop")
    endpoint(creator.id, elsewhere.id)  # hears another event only
    endpoint(other.id, None)  # someone else's
    with engine.begin() as conn:
        for endpoint_id, state, age in (
            (every, "delivered", 0),
            (every, "delivered", 0),
            (every, "failed", 0),
            (every, "pending", 90),
            (every, "pending", 5),
            (gone, "pending", 30),
        ):
            conn.execute(
                text(
                    "INSERT INTO webhook_messages (endpoint_id, log_id, event_type, state,"
                    " created_at) VALUES (:e, 1, 'booking.confirmed', :s,"
                    " now() - make_interval(secs => :a))"
                ),
                {"e": endpoint_id, "s": state, "a": age},
            )

    data = client.get("/api/dashboard", headers=auth(creator)).json()["data"]
    read_at = datetime.fromisoformat(data["readAt"])
    hooks = {h["id"]: h for h in data["focus"]["webhooks"]}
    assert set(hooks) == {every, gone}
    assert (hooks[every]["delivered"], hooks[every]["failed"], hooks[every]["pending"]) == (2, 1, 2)
    queue_age = read_at - datetime.fromisoformat(hooks[every]["oldestPendingAt"])
    assert timedelta(seconds=85) < queue_age < timedelta(seconds=95)
    assert hooks[every]["enabled"] and hooks[every]["disabledReason"] is None
    assert not hooks[gone]["enabled"]
    assert hooks[gone]["disabledReason"] == "410 Gone: the receiver asked to stop"
    assert hooks[gone]["pending"] == 1
