"""Lists of bookings page by a cursor, and the CSV export streams from a server-side cursor.

The export is read through a real uvicorn, so the test sees what a client would: the first
rows arrive while PostgreSQL still holds the rest behind a cursor.
"""

from __future__ import annotations

import csv
import io

import httpx
from sqlalchemy import Engine, text

from devstack import wait_until
from tests.conftest import ApiProcess


def add_bookings(engine: Engine, user_id: int, event_id: int, count: int) -> None:
    """``count`` decided bookings written straight into the table, in one statement, numbered
    in the event's line as the trigger would (whose update per row of one event's counter is
    quadratic in a single transaction: minutes for 100,000 rows), with no triggers run."""
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        arrived = conn.scalar(
            text(
                "UPDATE event_lines SET arrived = arrived + :count WHERE event_id = :event"
                " RETURNING arrived - :count"
            ),
            {"event": event_id, "count": count},
        )
        conn.execute(
            text(
                "INSERT INTO bookings (booking_id, user_id, event_id, quantity, status, reason,"
                " decided_at, queue_seq) SELECT 'bk_list_' || :event || '_' || n, :user, :event,"
                " 1, 'rejected', 'sold_out', now(), :arrived + n"
                " FROM generate_series(1, :count) AS n"
            ),
            {"user": user_id, "event": event_id, "count": count, "arrived": arrived},
        )


def walk(client, url: str, headers: dict[str, str], limit: int) -> list[dict]:
    """Every page from the first, following nextCursor; the pages as answered."""
    pages = []
    params: dict[str, str | int] = {"limit": limit}
    while True:
        response = client.get(url, params=params, headers=headers)
        assert response.status_code == 200, response.text
        pages.append(response.json()["data"])
        cursor = pages[-1]["nextCursor"]
        assert pages[-1]["hasMore"] is (cursor is not None)
        if cursor is None:
            return pages
        params = {"limit": limit, "after": cursor}


def test_my_bookings_page_by_cursor_and_a_new_booking_shifts_nothing(
    client, engine, make_user, make_event, auth
):
    user, event = make_user(), make_event()
    add_bookings(engine, user.id, event.id, 7)
    headers = auth(user)
    first = client.get("/api/bookings/user/me", params={"limit": 3}, headers=headers).json()
    assert first["data"]["total"] == 7
    # A booking made between two pages is newer than every listed one: with offset paging it
    # pushed a row already seen onto the next page.
    add_bookings(engine, user.id, make_event().id, 1)
    seen = [b["bookingId"] for b in first["data"]["bookings"]]
    cursor = first["data"]["nextCursor"]
    while cursor is not None:
        page = client.get(
            "/api/bookings/user/me", params={"limit": 3, "after": cursor}, headers=headers
        ).json()["data"]
        assert page["total"] is None  # counted on the first page only
        seen += [b["bookingId"] for b in page["bookings"]]
        cursor = page["nextCursor"]
    expected = [f"bk_list_{event.id}_{n}" for n in range(7, 0, -1)]  # newest first
    assert seen == expected

    unknown = client.get("/api/bookings/user/me", params={"after": "bk_nope"}, headers=headers)
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "VALIDATION_ERROR"
    # Someone else's booking is no cursor of this list.
    other = make_user()
    add_bookings(engine, other.id, make_event().id, 1)
    foreign = client.get("/api/bookings/user/me", params={"after": seen[0]}, headers=auth(other))
    assert foreign.status_code == 400


def test_an_events_bookings_page_by_cursor_in_arrival_order(
    client, engine, make_user, make_event, auth
):
    admin = make_user(role="admin")
    event = make_event()
    add_bookings(engine, make_user().id, event.id, 10)
    pages = walk(client, f"/api/bookings/admin/events/{event.id}", auth(admin), 4)
    assert [len(p["bookings"]) for p in pages] == [4, 4, 2]
    assert pages[0]["total"] == 10
    ids = [b["bookingId"] for p in pages for b in p["bookings"]]
    assert ids == [f"bk_list_{event.id}_{n}" for n in range(1, 11)]
    # The old offset paging still answers as before.
    old = client.get(
        f"/api/bookings/admin/events/{event.id}",
        params={"limit": 4, "offset": 8},
        headers=auth(admin),
    ).json()["data"]
    assert [b["bookingId"] for b in old["bookings"]] == ids[8:]
    assert old["total"] == 10 and old["hasMore"] is False


def test_the_csv_export_streams_from_a_server_side_cursor(engine, make_user, make_event, token_for):
    admin = make_user(role="admin")
    event = make_event()
    rows = 100_000  # far more than socket buffers hold, so the server waits on the reader
    add_bookings(engine, make_user().id, event.id, rows)
    proc = ApiProcess("api-csv").start()

    def cursor_open() -> bool:
        with engine.connect() as conn:
            return bool(
                conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND query LIKE 'FETCH FORWARD%'"
                    )
                )
            )

    try:
        headers = {"Authorization": f"Bearer {token_for(admin)}", "Accept": "text/csv"}
        url = f"{proc.url}/api/bookings/admin/events/{event.id}"
        with httpx.stream("GET", url, headers=headers, timeout=60) as response:
            assert response.status_code == 200
            chunks = response.iter_text()
            body = next(chunks)
            # Rows have arrived, most are still unread: PostgreSQL holds them behind a cursor.
            wait_until(cursor_open, 60, "the export's server-side cursor")
            body += "".join(chunks)
        lines = list(csv.reader(io.StringIO(body)))
        assert lines[0][0] == "booking_id"
        assert len(lines) == rows + 1
        assert (
            lines[1][0] == f"bk_list_{event.id}_1" and lines[-1][0] == f"bk_list_{event.id}_{rows}"
        )
        wait_until(lambda: not cursor_open(), 60, "the cursor closed once the export ended")
    finally:
        proc.stop()
