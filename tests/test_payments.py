"""The payment callback, fuzzed (issue 21): generated runs of callbacks with good and bad
signatures, replays of a webhook-id, stale and future timestamps, and bookings held, expired,
confirmed, cancelled or unknown, checked against a model of what each should do: a refused
callback records nothing and changes nothing; a verified one is decided once by its
webhook-id; a payment for a hold that ended is recorded as a refund, never lost."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import SecretStr
from sqlalchemy import text
from standardwebhooks import Webhook

from common.webhooks.messages import new_secret
from tests.test_holds import lapse, row
from tests.test_waitlist import ask, drain, leave

SECRET = new_secret()
OTHER_SECRET = new_secret()


@pytest.fixture(scope="module")
def payments_client(engine, settings):
    from api.app import create_app

    configured = settings.model_copy(update={"PAYMENT_WEBHOOK_SECRET": SecretStr(SECRET)})
    with TestClient(create_app(configured)) as test_client:
        yield test_client


def post(client, body: bytes, msg_id: str, *, secret=SECRET, at=None, signature=None):
    stamp = datetime.fromtimestamp(time.time() if at is None else at, UTC)
    sig = signature if signature is not None else Webhook(secret).sign(msg_id, stamp, body)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": sig,
        "content-type": "application/json",
    }
    return client.post("/api/payments/callback", content=body, headers=headers)


def body_for(booking_id: str, reference: str = "pay_1") -> bytes:
    return json.dumps({"bookingId": booking_id, "paymentReference": reference}).encode()


def recorded(db) -> int:
    return db.execute(text("SELECT count(*) FROM payment_callbacks")).scalar_one()


def test_a_payment_confirms_a_hold_once_and_a_redelivery_gets_the_same_answer(
    payments_client, db, make_user, hold_event
):
    event = hold_event(capacity=2)
    booking_id = ask(db, make_user(), event)
    drain(db, event)
    first = post(payments_client, body_for(booking_id), "msg_a")
    assert first.status_code == 200, first.text
    data = first.json()["data"]
    assert (data["outcome"], data["booking"]["status"], data["replayed"]) == (
        "confirmed",
        "confirmed",
        False,
    )
    again = post(payments_client, body_for(booking_id), "msg_a")
    assert again.json()["data"]["outcome"] == "confirmed" and again.json()["data"]["replayed"]
    logs = db.execute(
        text(
            "SELECT action, details->>'payment_reference' FROM booking_logs WHERE booking_id = :b"
        ),
        {"b": booking_id},
    ).all()
    assert [tuple(r) for r in logs] == [("held", None), ("paid", "pay_1")]


def test_a_payment_for_an_expired_hold_is_recorded_as_a_refund(
    payments_client, db, make_user, hold_event
):
    event = hold_event(capacity=2)
    booking_id = ask(db, make_user(), event)
    drain(db, event)
    lapse(db, booking_id)
    answer = post(payments_client, body_for(booking_id, "pay_late"), "msg_late")
    assert answer.status_code == 200
    data = answer.json()["data"]
    assert (data["outcome"], data["reason"]) == ("refund_required", "hold_expired")
    assert row(db, booking_id).status == "held"  # nothing changed; the decider expires it
    refund = db.execute(
        text("SELECT payment_reference, outcome FROM payment_callbacks WHERE webhook_id = :w"),
        {"w": "msg_late"},
    ).one()
    assert tuple(refund) == ("pay_late", "refund_required")


def test_without_a_secret_the_callback_is_refused(client, db):
    answer = post(client, body_for("bk_x"), "msg_x")
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "PAYMENTS_NOT_CONFIGURED"
    assert recorded(db) == 0


# The kinds of booking a generated callback names, and what a verified first delivery does.
KINDS = ("held", "expired", "lapsed", "confirmed", "cancelled", "unknown")
EXPECTED = {
    "held": ("confirmed", None),
    "lapsed": ("refund_required", "hold_expired"),  # past its end, not yet expired
    "expired": ("refund_required", "hold_expired"),
    "confirmed": ("already_confirmed", None),
    "cancelled": ("refund_required", "booking_cancelled"),
    "unknown": ("refund_required", "unknown_booking"),
}
SIGNATURES = ("good", "other_secret", "garbage", "empty")

callback = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(KINDS),
        "signature": st.sampled_from(SIGNATURES),
        # Seconds off now: the tolerance is 300.
        "skew": st.one_of(
            st.integers(-200, 200),
            st.integers(301, 100_000).map(lambda s: -s),
            st.integers(301, 100_000),
        ),  # fmt: skip
        "replay": st.booleans(),
        "reference": st.text(min_size=1, max_size=20).filter(
            lambda s: '"' not in s and "\\" not in s
        ),  # fmt: skip
    }
)


@hsettings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(run=st.lists(callback, min_size=1, max_size=8))
def test_the_payment_callback_fuzzed(payments_client, db, make_user, hold_event, run):
    event = hold_event(capacity=50)
    bookings: dict[str, str] = {}
    for kind in KINDS:
        if kind == "unknown":
            bookings[kind] = "bk_" + uuid.uuid4().hex[:24]
            continue
        bookings[kind] = ask(db, make_user(), event)
    drain(db, event)
    lapse(db, bookings["expired"], bookings["lapsed"])
    leave(db, bookings["cancelled"])
    db.execute(
        text("UPDATE bookings SET status = 'confirmed' WHERE booking_id = :b"),
        {"b": bookings["confirmed"]},
    )
    db.commit()
    drain(db, event)  # expires "expired", cancels "cancelled"; "lapsed" is moved past its end again
    lapse(db, bookings["lapsed"])
    before = {k: row(db, b) for k, b in bookings.items() if k != "unknown"}
    answered: dict[str, tuple] = {}  # the model: webhook-id -> the first verified answer
    ids: list[str] = []
    confirmed_by_payment = False
    for step in run:
        msg_id = ids[-1] if step["replay"] and ids else "msg_" + uuid.uuid4().hex
        body = body_for(bookings[step["kind"]], step["reference"])
        signature = {
            "good": None,
            "other_secret": Webhook(OTHER_SECRET).sign(msg_id, datetime.now(UTC), body),
            "garbage": "v1,AAAA",
            "empty": "",
        }[step["signature"]]
        answer = post(payments_client, body, msg_id, at=time.time() + step["skew"],
                      signature=signature)  # fmt: skip
        verified = step["signature"] == "good" and abs(step["skew"]) <= 300
        if not verified:
            assert answer.status_code in (401,), answer.text
            stale = abs(step["skew"]) > 300 and step["signature"] != "empty"
            code = answer.json()["error"]["code"]
            assert code == ("PAYMENT_TIMESTAMP_STALE" if stale else "PAYMENT_SIGNATURE_INVALID")
            continue
        assert answer.status_code == 200, answer.text
        data = answer.json()["data"]
        if msg_id in answered:
            first = answered[msg_id]
            assert data["replayed"]
            assert (data["outcome"], data["reason"], data["bookingId"]) == first
            continue
        ids.append(msg_id)
        kind = step["kind"]
        expected = EXPECTED[kind]
        if kind == "held" and confirmed_by_payment:
            expected = ("already_confirmed", None)
        assert (data["outcome"], data["reason"]) == expected, (kind, data)
        assert not data["replayed"]
        if kind == "held":
            confirmed_by_payment = True
        answered[msg_id] = (data["outcome"], data["reason"], data["bookingId"])
    # Nothing but the held booking changed, and only through a verified callback.
    for kind, was in before.items():
        now = row(db, bookings[kind])
        if kind == "held" and confirmed_by_payment:
            assert now.status == "confirmed"
        else:
            assert now == was, kind
    assert db.execute(
        text("SELECT count(*) FROM payment_callbacks WHERE webhook_id = ANY(:ids)"),
        {"ids": ids},
    ).scalar_one() == len(answered)
