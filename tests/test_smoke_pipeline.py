from __future__ import annotations


def test_booking_is_decided_by_a_real_worker(client, worker, make_user, make_event, auth):
    user = make_user()
    event = make_event(capacity=5)
    response = client.post(
        "/api/bookings",
        json={"eventId": event.id, "quantity": 2},
        headers={**auth(user), "Prefer": "wait=20"},
    )
    assert response.status_code == 201, response.text
    body = response.json()["data"]
    assert body["status"] == "confirmed"
    assert client.get(f"/api/events/{event.id}").json()["data"]["availableSeats"] == 3
