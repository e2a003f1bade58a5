"""Webhooks: endpoints through the API, the outbox written with the decision, and delivery by a
real Celery worker to a real HTTP receiver that fails in the ways receivers do."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import text

from bench import baseline
from common.settings import Settings
from common.tasks import WEBHOOKS_QUEUE
from common.webhooks import delivery
from common.webhooks.deliverer import retry_delay
from common.webhooks.messages import EVENT_TYPES
from devstack import RedisServer, wait_until
from tests.conftest import ApiProcess, BeatProcess, WorkerProcess
from tests.webhook_receiver import Receiver

SETTLE = 120  # seconds; a hang guard only
HOOK_ENV = {
    "WEBHOOK_RETRY_DELAYS": "1,1,2",
    "WEBHOOK_TIMEOUT": "1",
    "WEBHOOK_CONNECT_TIMEOUT": "1",
    "WEBHOOK_SWEEP_INTERVAL": "1",
    "WEBHOOK_DISABLE_AFTER": "40",
}

# ---------------------------------------------------------------- rules without services


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1", "fd00:ec2::254",
     "::ffff:127.0.0.1", "100.64.0.1", "0.0.0.0"],
)  # fmt: skip
def test_private_loopback_link_local_and_metadata_are_refused(address):
    assert not delivery.is_allowed(ipaddress.ip_address(address), [])


def test_the_allow_list_opens_what_it_names_and_public_addresses_pass():
    assert delivery.is_allowed(ipaddress.ip_address("127.0.0.1"), ["127.0.0.0/8"])
    assert not delivery.is_allowed(ipaddress.ip_address("10.0.0.1"), ["127.0.0.0/8"])
    assert delivery.is_allowed(ipaddress.ip_address("93.184.216.34"), [])


def test_a_name_is_checked_by_every_address_it_resolves_to():
    with pytest.raises(delivery.DestinationRefused):
        delivery.resolve("http://localhost:9/x", [])
    target = delivery.resolve("http://localhost:9/x", ["127.0.0.0/8", "::1/128"])
    assert target.address.is_loopback and target.host == "localhost"


@pytest.mark.parametrize(
    ("status", "verdict"),
    [(200, "delivered"), (204, "delivered"), (500, "retry"), (503, "retry"), (408, "retry"),
     (429, "retry"), (410, "gone"), (400, "failed"), (401, "failed"), (301, "failed")],
)  # fmt: skip
def test_what_each_status_means(status, verdict):
    assert delivery.verdict_of(status) == verdict


def test_the_default_schedule_spans_about_a_day_and_retry_after_is_honoured():
    settings = Settings()
    total = sum(settings.WEBHOOK_RETRY_DELAYS[: settings.WEBHOOK_DISABLE_AFTER - 1])
    assert timedelta(hours=18) < timedelta(seconds=total) < timedelta(hours=30)
    assert retry_delay(3, settings, 7.0) == 7.0
    assert 0.8 * 120 <= retry_delay(3, settings, None) <= 1.2 * 120
    assert delivery.retry_after("120", datetime.now(UTC)) == 120


# ---------------------------------------------------------------- endpoints through the API


def create(client, headers, **body):
    return client.post("/api/webhooks", json=body, headers=headers)


def test_secret_is_shown_once_and_scope_follows_event_ownership(
    client, make_user, make_event, auth
):
    admin, creator, other = make_user("admin"), make_user(), make_user()
    mine = make_event(created_by=creator.id)
    answer = create(client, auth(admin), url="http://127.0.0.1:9/a")
    assert answer.status_code == 201, answer.text
    data = answer.json()["data"]
    assert data["secret"].startswith("whsec_") and data["eventTypes"] is None
    shown = client.get(f"/api/webhooks/{data['id']}", headers=auth(admin)).json()["data"]
    assert "secret" not in shown

    assert (
        create(client, auth(creator), url="http://127.0.0.1:9/b", eventId=mine.id).status_code
        == 201
    )
    assert (
        create(client, auth(other), url="http://127.0.0.1:9/c", eventId=mine.id).status_code == 403
    )
    assert create(client, auth(creator), url="http://127.0.0.1:9/d").status_code == 403
    # The creator sees their endpoint only; the admin sees both.
    assert client.get("/api/webhooks", headers=auth(creator)).json()["data"]["total"] == 1
    assert client.get("/api/webhooks", headers=auth(admin)).json()["data"]["total"] == 2
    assert client.get(f"/api/webhooks/{data['id']}", headers=auth(other)).status_code == 404


def test_private_destinations_and_unknown_types_are_refused(client, make_user, auth):
    admin = make_user("admin")
    refused = create(client, auth(admin), url="http://10.0.0.1/hook")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "WEBHOOK_URL_REFUSED"
    metadata = create(client, auth(admin), url="http://169.254.169.254/latest/meta-data")
    assert metadata.json()["error"]["code"] == "WEBHOOK_URL_REFUSED"
    unknown = create(client, auth(admin), url="http://127.0.0.1:9/", eventTypes=["booking.nope"])
    assert unknown.status_code == 400


# ---------------------------------------------------------------- the outbox


def outbox(db) -> list[tuple[int, str]]:
    db.rollback()
    return [
        tuple(r)
        for r in db.execute(
            text("SELECT endpoint_id, event_type FROM webhook_messages ORDER BY id")
        )
    ]


def test_a_message_commits_with_its_decision_and_only_then(
    client, make_user, make_event, auth, session_factory, db, sync_baseline
):
    admin, buyer = make_user("admin"), make_user()
    event = make_event(capacity=1)
    everything = create(client, auth(admin), url="http://127.0.0.1:9/").json()["data"]["id"]
    rejections = create(
        client, auth(admin), url="http://127.0.0.1:9/r", eventTypes=["booking.rejected"]
    ).json()["data"]["id"]
    with session_factory() as session:
        baseline.create_booking(session, buyer.id, event.id, "bk-rolled-back", 1)
        session.rollback()
    assert outbox(db) == []
    with session_factory() as session:
        assert baseline.create_booking(session, buyer.id, event.id, "bk-1", 1) == "confirmed"
        assert baseline.create_booking(session, buyer.id, event.id, "bk-2", 1) == "sold_out"
        session.commit()
    assert outbox(db) == [
        (everything, "booking.confirmed"),
        (everything, "booking.rejected"),
        (rejections, "booking.rejected"),
    ]


def test_every_decision_type_is_a_type_endpoints_can_pick():
    assert {t.removeprefix("booking.") for t in EVENT_TYPES} >= {
        "confirmed", "waitlisted", "promoted", "rejected", "cancelled"
    }  # fmt: skip


# ---------------------------------------------------------------- delivery, end to end


@pytest.fixture
def hooks(engine, worker) -> Iterator[tuple[WorkerProcess, BeatProcess]]:
    """A worker for the webhooks queue and a beat for the webhook sweeper."""
    hook_worker = WorkerProcess("webhooks-worker", concurrency=1, queues="webhooks", **HOOK_ENV)
    beat = BeatProcess("webhooks-beat", **HOOK_ENV)
    yield hook_worker.start(), beat.start()
    for proc in (hook_worker, beat):
        if proc.proc is not None:
            proc.stop(9)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(hang=2).start()
    yield r
    r.stop()


def book(client, make_user, auth, event_id: int, count: int) -> int:
    """Requests for one seat each; how many were stored (a sold-out event refuses at intake)."""
    stored = 0
    for _ in range(count):
        answer = client.post("/api/bookings", json={"eventId": event_id}, headers=auth(make_user()))
        assert answer.status_code in (201, 202, 409), answer.text
        stored += answer.status_code != 409
    return stored


def decided_ids(db, event_id: int) -> set[str]:
    db.rollback()
    rows = db.execute(text("SELECT id FROM booking_logs WHERE event_id = :e"), {"e": event_id})
    return {f"msg_{i}" for (i,) in rows}


def settle(db, receiver: Receiver, secret: str, event_id: int, expected: int) -> dict[str, bytes]:
    wait_until(lambda: len(decided_ids(db, event_id)) >= expected, SETTLE, "all decided")
    ids = decided_ids(db, event_id)
    wait_until(lambda: set(receiver.verified_ids(secret)) >= ids, SETTLE, "all delivered")
    # Sent, then recorded: the delivery log is complete once nothing of the event is pending.
    wait_until(lambda: not undelivered(db, event_id), SETTLE, "all recorded")
    return receiver.verified_ids(secret)


def undelivered(db, event_id: int) -> int:
    db.rollback()
    return int(
        db.execute(
            text(
                "SELECT count(*) FROM webhook_messages m JOIN booking_logs l ON l.id = m.log_id"
                " WHERE l.event_id = :e AND m.state = 'pending'"
            ),
            {"e": event_id},
        ).scalar_one()
    )


def test_every_message_arrives_signed_through_500_429_hang_and_close(
    client, make_user, make_event, auth, db, hooks, receiver
):
    receiver.script.extend([500, 429, "hang", "close", 503])
    admin = make_user("admin")
    made = create(client, auth(admin), url=receiver.url).json()["data"]
    event = make_event(capacity=5)
    stored = book(client, make_user, auth, event.id, 8)
    delivered = settle(db, receiver, made["secret"], event.id, stored)
    bodies = [json.loads(b) for b in delivered.values()]
    assert sorted(b["type"] for b in bodies).count("booking.confirmed") == 5
    assert all(b["data"]["eventId"] == event.id and b["data"]["version"] > 0 for b in bodies)

    # The failed attempts are in the log, with what the receiver said, under the same ids.
    # The worker records an attempt after the receiver has the body: wait for the last one.
    def attempts() -> list[dict]:
        log = client.get(f"/api/webhooks/{made['id']}/deliveries?limit=100", headers=auth(admin))
        return [a for d in log.json()["data"]["deliveries"] for a in d["attemptLog"]]

    wait_until(
        lambda: {500, 429, 503, 200} <= {a["statusCode"] for a in attempts()},
        SETTLE,
        "every kind of answer in the delivery log",
    )
    logged = attempts()
    assert {a["error"] for a in logged if a["statusCode"] is None} >= {"timeout"}
    assert any(a["responseHead"] == "no thanks" for a in logged)
    sent_ids = {r.headers["webhook-id"] for r in receiver.got}
    assert sent_ids == set(delivered), "a retry came with another webhook-id"
    # Messages about one booking reached the receiver in the order of its versions.
    endpoint = client.get(f"/api/webhooks/{made['id']}", headers=auth(admin)).json()["data"]
    assert endpoint["failureCount"] == 0 and endpoint["enabled"]


def test_410_disables_the_endpoint_and_enabling_it_sends_what_waited(
    client, make_user, make_event, auth, db, hooks, receiver
):
    receiver.script.append(410)
    admin = make_user("admin")
    made = create(client, auth(admin), url=receiver.url).json()["data"]
    event = make_event(capacity=5)
    stored = book(client, make_user, auth, event.id, 1)
    path = f"/api/webhooks/{made['id']}"
    wait_until(
        lambda: not client.get(path, headers=auth(admin)).json()["data"]["enabled"],
        SETTLE,
        "disabled by 410",
    )
    shown = client.get(path, headers=auth(admin)).json()["data"]
    assert "410" in shown["disabledReason"]
    assert receiver.accepted() == []
    assert client.put(path, json={"enabled": True}, headers=auth(admin)).status_code == 200
    settle(db, receiver, made["secret"], event.id, stored)


def test_a_run_of_failures_disables_with_a_reason_and_rotation_keeps_the_old_secret(
    client, make_user, make_event, auth, db, engine, worker, receiver
):
    env = {**HOOK_ENV, "WEBHOOK_DISABLE_AFTER": "3", "WEBHOOK_RETRY_DELAYS": "1"}
    procs = [
        WorkerProcess("webhooks-worker-3", concurrency=1, queues="webhooks", **env).start(),
        BeatProcess("webhooks-beat-3", **env).start(),
    ]
    try:
        receiver.default = 500
        admin = make_user("admin")
        made = create(client, auth(admin), url=receiver.url).json()["data"]
        event = make_event(capacity=5)
        stored = book(client, make_user, auth, event.id, 2)
        path = f"/api/webhooks/{made['id']}"
        wait_until(
            lambda: not client.get(path, headers=auth(admin)).json()["data"]["enabled"],
            SETTLE,
            "disabled after 3 failures",
        )
        reason = client.get(path, headers=auth(admin)).json()["data"]["disabledReason"]
        assert "3 consecutive failed attempts" in reason and "HTTP 500" in reason
        rotated = client.post(f"{path}/rotate-secret", headers=auth(admin)).json()["data"]
        assert rotated["secret"] != made["secret"]
        receiver.default = 200
        client.put(path, json={"enabled": True}, headers=auth(admin))
        # Both secrets verify during the grace period.
        old = settle(db, receiver, made["secret"], event.id, stored)
        assert set(receiver.verified_ids(rotated["secret"])) == set(old)
    finally:
        for proc in procs:
            proc.stop(9)


def test_a_receiver_away_and_back_gets_everything(
    client, make_user, make_event, auth, db, hooks, receiver
):
    admin = make_user("admin")
    made = create(client, auth(admin), url=receiver.url).json()["data"]
    receiver.stop()
    event = make_event(capacity=3)
    stored = book(client, make_user, auth, event.id, 5)
    wait_until(lambda: len(decided_ids(db, event.id)) >= stored, SETTLE, "decided")
    log = f"/api/webhooks/{made['id']}/deliveries?state=pending"
    wait_until(
        lambda: any(
            d["lastError"]
            for d in client.get(log, headers=auth(admin)).json()["data"]["deliveries"]
        ),
        SETTLE,
        "a failed attempt while away",
    )
    receiver.start()
    settle(db, receiver, made["secret"], event.id, stored)


def test_kill_9_of_the_delivering_worker_mid_request_loses_nothing(
    client, make_user, make_event, auth, db, engine, worker, receiver
):
    receiver.hang = 30  # the first request hangs until the worker is killed
    receiver.script.append("hang")
    env = {**HOOK_ENV, "WEBHOOK_TIMEOUT": "60"}
    first = WorkerProcess("webhooks-doomed", concurrency=1, queues="webhooks", **env).start()
    beat = BeatProcess("webhooks-beat-kill", **HOOK_ENV).start()
    second = None
    try:
        admin = make_user("admin")
        made = create(client, auth(admin), url=receiver.url).json()["data"]
        event = make_event(capacity=4)
        stored = book(client, make_user, auth, event.id, 6)
        wait_until(receiver.first_request.is_set, SETTLE, "a delivery in flight")
        assert first.proc is not None
        for pid in child_pids(first.proc.pid) + [first.proc.pid]:
            os.kill(pid, signal.SIGKILL)
        second = WorkerProcess(
            "webhooks-heir", concurrency=1, queues="webhooks", **HOOK_ENV
        ).start()
        delivered = settle(db, receiver, made["secret"], event.id, stored)
        first_id = receiver.got[0].headers["webhook-id"]
        assert first_id in delivered  # sent again after the kill, under its own id
    finally:
        for proc in (first, beat, second):
            if proc is not None and proc.proc is not None:
                proc.stop(9)


def child_pids(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


# ---------------------------------------------------------------- Redis and the broker away


def test_a_redis_and_broker_outage_delays_deliveries_and_loses_none(
    client, make_user, make_event, auth, token_for, db, engine, private_broker, receiver
):
    """Decisions whose deliver tasks sit in the broker when it dies (a private redis-server
    that keeps nothing: its restart loses every queued task), and bookings accepted while it is
    down, all reach the receiver once it is back. One endpoint per event, so no later decision's
    task sends the first event's messages by the way."""
    server = RedisServer().start()
    other = Receiver().start()  # each endpoint its own: a receiver verifies with one secret
    env = {**HOOK_ENV, **private_broker, "REDIS_URL": server.url}
    procs: list[Any] = [
        WorkerProcess("webhooks-outage-decider", concurrency=1, **env),
        BeatProcess("webhooks-outage-beat", **env),
        ApiProcess("webhooks-outage-api", **env),
    ]
    try:
        for proc in procs:
            proc.start()
        api = procs[2]
        admin = make_user("admin")
        before, during = make_event(capacity=3), make_event(capacity=3)
        secrets = {
            e.id: create(client, auth(admin), url=r.url, eventId=e.id).json()["data"]["secret"]
            for e, r in ((before, receiver), (during, other))
        }

        def book(event_id: int, prefer: str | None = None) -> int:
            headers = {"Authorization": f"Bearer {token_for(make_user())}"}
            if prefer:
                headers["Prefer"] = prefer
            answer = httpx.post(
                f"{api.url}/api/bookings", json={"eventId": event_id}, headers=headers, timeout=60
            )
            assert answer.status_code in (201, 202, 409), answer.text
            return int(answer.status_code != 409)  # a sold-out event refuses at intake

        # Decided while no worker takes the webhooks queue: their tasks wait in the broker.
        stored = sum(book(before.id, "wait=10") for _ in range(4))
        wait_until(lambda: len(decided_ids(db, before.id)) >= stored, SETTLE, "decided")
        if not private_broker:  # Redis is the broker: its deliver tasks (one a decision) are in
            with redis.Redis.from_url(server.url) as broker:
                wait_until(lambda: broker.llen(WEBHOOKS_QUEUE) >= stored, SETTLE, "tasks queued")
        server.kill()
        accepted = sum(book(during.id) for _ in range(4))  # committed while Redis is away
        server.start()  # the same port, empty
        procs.append(
            WorkerProcess("webhooks-outage-hooks", concurrency=1, queues="webhooks", **env).start()
        )
        first = settle(db, receiver, secrets[before.id], before.id, stored)
        second = settle(db, other, secrets[during.id], during.id, accepted)
        for delivered in (first, second):
            types = [json.loads(b)["type"] for b in delivered.values()]
            assert types.count("booking.confirmed") == 3
    finally:
        for proc in procs:
            proc.stop(9)
        server.close()
        other.stop()


# ---------------------------------------------------------------- redelivery and order


def first_arrivals(receiver: Receiver) -> list[dict[str, Any]]:
    """The accepted messages' bodies in the order they first arrived."""
    seen: dict[str, dict[str, Any]] = {}
    for r in receiver.accepted():
        seen.setdefault(r.headers["webhook-id"], json.loads(r.body))
    return list(seen.values())


def test_one_message_redelivered_goes_again_with_its_id_and_body(
    client, make_user, make_event, auth, db, hooks, receiver
):
    admin, stranger = make_user("admin"), make_user()
    made = create(client, auth(admin), url=receiver.url).json()["data"]
    event = make_event(capacity=5)
    stored = book(client, make_user, auth, event.id, 3)
    delivered = settle(db, receiver, made["secret"], event.id, stored)
    path = f"/api/webhooks/{made['id']}"

    def log() -> list[dict[str, Any]]:
        return client.get(f"{path}/deliveries", headers=auth(admin)).json()["data"]["deliveries"]

    # A message is recorded after it is sent: wait for the record too.
    wait_until(lambda: {d["state"] for d in log()} == {"delivered"}, SETTLE, "recorded")
    chosen = log()[-1]  # the oldest
    sent = len(receiver.got)

    assert (
        client.post(f"{path}/deliveries/999999/redeliver", headers=auth(admin)).status_code == 404
    )
    assert (
        client.post(f"{path}/deliveries/{chosen['id']}/redeliver", headers=auth(stranger))
    ).status_code == 404  # not theirs: as if it did not exist
    answer = client.post(f"{path}/deliveries/{chosen['id']}/redeliver", headers=auth(admin))
    assert answer.status_code == 202 and answer.json()["data"]["redelivered"] == 1
    wait_until(lambda: len(receiver.accepted()) > sent, SETTLE, "the redelivery")
    again = receiver.accepted()[sent]
    assert again.headers["webhook-id"] == chosen["messageId"]
    assert again.body == delivered[chosen["messageId"]]  # the same bytes, signed afresh
    assert set(receiver.verified_ids(made["secret"])) == set(delivered)
    wait_until(
        lambda: next(d for d in log() if d["id"] == chosen["id"])["attempts"] == 2,
        SETTLE,
        "the second attempt in the log",
    )
    assert [d["attempts"] for d in log() if d["id"] != chosen["id"]] == [1] * (stored - 1)


def test_everything_since_a_time_is_redelivered_oldest_first_and_nothing_before(
    client, make_user, make_event, auth, db, hooks, receiver
):
    admin = make_user("admin")
    made = create(client, auth(admin), url=receiver.url).json()["data"]
    early, late = make_event(capacity=5), make_event(capacity=5)
    settle(db, receiver, made["secret"], early.id, book(client, make_user, auth, early.id, 2))
    db.rollback()
    since = db.execute(text("SELECT now()")).scalar_one()  # the database's clock writes them
    stored = book(client, make_user, auth, late.id, 3)
    settle(db, receiver, made["secret"], late.id, stored)
    sent = len(receiver.got)

    path = f"/api/webhooks/{made['id']}/redeliver"
    answer = client.post(path, json={"since": since.isoformat()}, headers=auth(admin))
    assert answer.status_code == 202, answer.text
    assert answer.json()["data"]["redelivered"] == stored
    wait_until(lambda: len(receiver.accepted()) >= sent + stored, SETTLE, "the redeliveries")
    again = receiver.accepted()[sent:]
    assert {json.loads(r.body)["data"]["eventId"] for r in again} == {late.id}
    versions = [json.loads(r.body)["data"]["version"] for r in again]
    assert versions == sorted(versions) and len(set(versions)) == stored


def test_messages_about_one_booking_arrive_in_the_order_of_its_changes(
    client, make_user, make_event, auth, db, engine, worker, receiver
):
    """Decided before any deliverer runs, so the whole queue is there when the first message
    fails: a retryable failure must hold the queue, or a booking's cancellation would arrive
    before its confirmation."""
    from tests.test_waitlist import ask, drain, leave

    admin, first, second = make_user("admin"), make_user(), make_user()
    made = create(client, auth(admin), url=receiver.url).json()["data"]
    event = make_event(capacity=1)
    db.execute(text("UPDATE events SET waitlist_enabled = true WHERE id = :e"), {"e": event.id})
    db.commit()
    a, b = ask(db, first, event), ask(db, second, event)
    drain(db, event)  # a confirmed, b waitlisted
    leave(db, a)
    drain(db, event)  # a cancelled, b promoted
    receiver.script.extend([500, 503])
    procs = [
        WorkerProcess("webhooks-order", concurrency=1, queues="webhooks", **HOOK_ENV).start(),
        BeatProcess("webhooks-order-beat", **HOOK_ENV).start(),
    ]
    try:
        settle(db, receiver, made["secret"], event.id, 4)
    finally:
        for proc in procs:
            proc.stop(9)
    arrived = first_arrivals(receiver)
    by_booking = {
        booking: [m["type"] for m in arrived if m["data"]["bookingId"] == booking]
        for booking in (a, b)
    }
    assert by_booking == {
        a: ["booking.confirmed", "booking.cancelled"],
        b: ["booking.waitlisted", "booking.promoted"],
    }
    for booking in (a, b):
        versions = [m["data"]["version"] for m in arrived if m["data"]["bookingId"] == booking]
        assert versions == sorted(versions)


def test_promotions_by_an_event_edit_are_sent_at_once_not_by_the_sweeper(
    client, make_user, make_event, auth, db, engine, worker, receiver
):
    """No beat runs here, so only the task the edit sends after its commit can deliver."""
    from tests.test_waitlist import ask, drain

    admin, first, second = make_user("admin"), make_user(), make_user()
    event = make_event(capacity=1)
    db.execute(text("UPDATE events SET waitlist_enabled = true WHERE id = :e"), {"e": event.id})
    db.commit()
    ask(db, first, event)
    waiting = ask(db, second, event)
    drain(db, event)  # confirmed and waitlisted, before the endpoint exists
    # An id no earlier test's leftover deliver task (restored from a killed worker) names.
    db.execute(text("SELECT setval(pg_get_serial_sequence('webhook_endpoints', 'id'), 100000)"))
    db.commit()
    made = create(client, auth(admin), url=receiver.url).json()["data"]
    hooks = WorkerProcess("webhooks-edit", concurrency=1, queues="webhooks", **HOOK_ENV).start()
    try:
        edit = client.put(f"/api/events/{event.id}", json={"seatCapacity": 2}, headers=auth(admin))
        assert edit.status_code == 200, edit.text
        wait_until(lambda: receiver.verified_ids(made["secret"]), SETTLE, "the promotion sent")
    finally:
        hooks.stop(9)
    (body,) = receiver.verified_ids(made["secret"]).values()
    message = json.loads(body)
    assert message["type"] == "booking.promoted" and message["data"]["bookingId"] == waiting
