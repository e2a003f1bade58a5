from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError


def future(days: int = 10) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


def event_body(**overrides):
    return {
        "name": "Jazz Night",
        "description": "Live jazz",
        "venue": "Blue Room",
        "eventDate": future(),
        "seatCapacity": 50,
    } | overrides


def test_admin_creates_an_event(client, make_user, auth):
    admin = make_user("admin")
    response = client.post("/api/events", json=event_body(), headers=auth(admin))
    assert response.status_code == 201
    data = response.json()["data"]
    assert data["availableSeats"] == data["seatCapacity"] == 50
    assert data["maxSeatsPerUser"] == 10
    assert data["createdBy"] == admin.id
    assert data["version"] == 0


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"eventDate": (datetime.now(UTC) - timedelta(days=1)).isoformat()}, "eventDate"),
        ({"eventDate": "2031-01-01T10:00:00"}, "eventDate"),  # no time zone
        ({"seatCapacity": 0}, "seatCapacity"),
        ({"seatCapacity": 1_000_001}, "seatCapacity"),
        ({"name": ""}, "name"),
        ({"availableSeats": 3}, "availableSeats"),
        ({"imageUrl": "javascript:alert(1)"}, "imageUrl"),
    ],
)
def test_event_validation(client, make_user, auth, overrides, field):
    response = client.post(
        "/api/events", json=event_body(**overrides), headers=auth(make_user("admin"))
    )
    assert response.status_code == 400
    assert [d["field"] for d in response.json()["error"]["details"]] == [field]


def test_list_paginates_filters_and_searches(client, make_event):
    make_event(name="Past Gig", starts_in=timedelta(days=-1))
    for i in range(5):
        make_event(name=f"Rock {i}", starts_in=timedelta(days=i + 1))
    page = client.get("/api/events", params={"limit": 2, "offset": 0}).json()["data"]
    assert page["total"] == 6 and page["hasMore"] is True and len(page["events"]) == 2
    assert page["events"][0]["name"] == "Past Gig"  # soonest first
    last = client.get("/api/events", params={"limit": 2, "offset": 4}).json()["data"]
    assert last["hasMore"] is False
    upcoming = client.get("/api/events", params={"upcoming": "true", "limit": 100}).json()["data"]
    assert upcoming["total"] == 5
    found = client.get("/api/events", params={"q": "rOcK 3"}).json()["data"]
    assert [e["name"] for e in found["events"]] == ["Rock 3"]
    assert client.get("/api/events", params={"q": "100%"}).json()["data"]["total"] == 0


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"limit": 1000}, {"offset": -1}])
def test_list_rejects_bad_paging(client, params):
    response = client.get("/api/events", params=params)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"


def test_update_recomputes_available_seats_and_bumps_version(client, make_user, make_event, auth):
    admin = make_user("admin")
    event = make_event(capacity=100, available=60, created_by=admin.id)
    response = client.put(f"/api/events/{event.id}", json={"seatCapacity": 50}, headers=auth(admin))
    assert response.status_code == 200
    data = response.json()["data"]
    assert (data["seatCapacity"], data["availableSeats"]) == (50, 10)
    assert data["version"] == event.version + 1


def test_capacity_never_drops_below_booked_seats(client, make_user, make_event, auth):
    admin = make_user("admin")
    event = make_event(capacity=100, available=60)
    response = client.put(f"/api/events/{event.id}", json={"seatCapacity": 39}, headers=auth(admin))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "CAPACITY_BELOW_BOOKED"


def test_started_event_cannot_be_changed(client, make_user, make_event, auth):
    admin = make_user("admin")
    event = make_event(starts_in=timedelta(minutes=-5))
    response = client.put(f"/api/events/{event.id}", json={"name": "New"}, headers=auth(admin))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "EVENT_PAST"


def test_update_refuses_null_for_required_fields(client, make_user, make_event, auth):
    admin = make_user("admin")
    event = make_event()
    response = client.put(f"/api/events/{event.id}", json={"name": None}, headers=auth(admin))
    assert response.status_code == 400


def test_delete_refused_while_confirmed_bookings_exist(client, make_user, make_event, auth, db):
    admin, user = make_user("admin"), make_user()
    event = make_event(capacity=10, available=9)
    db.execute(
        text(
            "INSERT INTO bookings (booking_id, user_id, event_id, status, decided_at)"
            " VALUES ('bk_x', :u, :e, 'confirmed', now())"
        ),
        {"u": user.id, "e": event.id},
    )
    db.commit()
    response = client.delete(f"/api/events/{event.id}", headers=auth(admin))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "EVENT_HAS_BOOKINGS"
    assert client.get(f"/api/events/{event.id}").status_code == 200


def test_delete(client, make_user, make_event, auth):
    admin = make_user("admin")
    event = make_event()
    assert client.delete(f"/api/events/{event.id}", headers=auth(admin)).status_code == 200
    response = client.get(f"/api/events/{event.id}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "EVENT_NOT_FOUND"


def test_database_refuses_negative_or_excess_available_seats(db, make_event):
    event = make_event(capacity=5)
    for value in (-1, 6):
        with pytest.raises(IntegrityError):
            db.execute(
                text("UPDATE events SET available_seats = :v WHERE id = :id"),
                {"v": value, "id": event.id},
            )
        db.rollback()
    with pytest.raises(IntegrityError):
        db.execute(text("UPDATE events SET seat_capacity = 0, available_seats = 0"))
    db.rollback()


@pytest.mark.parametrize("method", ["post", "put"])
def test_a_date_past_year_9999_in_utc_is_400(client, make_user, make_event, auth, method):
    """`9999-12-31T23:59:59-14:00` is year 10000 once in UTC, which Python's datetime cannot
    hold: a 400 naming the field, not a 500."""
    admin = auth(make_user(role="admin"))
    date = "9999-12-31T23:59:59-14:00"
    if method == "post":
        body = {"name": "Far", "eventDate": date, "seatCapacity": 10}
        response = client.post("/api/events", json=body, headers=admin)
    else:
        response = client.put(
            f"/api/events/{make_event().id}", json={"eventDate": date}, headers=admin
        )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert [d["field"] for d in error["details"]] == ["eventDate"]
