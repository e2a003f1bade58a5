"""What the booking pipeline publishes after each committed batch.

To the event's channel, one message per batch (never one per booking): ``booking_created``
(only confirmations and holds), ``booking_cancelled`` (only cancellations and expiries) or
``seat_update`` (both) when the batch took or gave back seats, else ``line_update`` (requests
waitlisted or rejected: only the line moved). All four carry the same seat fields, the event's
``version``, the batch's counts (``promoted`` ones, confirmed or held from the waitlist, are also
in ``confirmed`` or ``held``) and the event's ``line`` after it: ``through`` and ``gone`` (its
cursor, common/bookings/line.py), ``waiting`` (the line's length) and ``waitlisted``
(the waitlist's).
To the decisions channel, one ``booking_statuses`` message per batch: the ``booking_status`` of
every decided request with its owner's ``userId``; each API process hands each one to its
waiters and to that user's sockets (as ``booking_status``, without ``userId``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import redis

from common.bookings.schemas import Decision
from common.channels import decisions_channel, event_channel
from common.pubsub import encode, now_iso

# The counts a seat message carries, summed when the API coalesces messages (api/realtime).
SEAT_COUNTS = ("confirmed", "held", "cancelled", "expired", "rejected", "waitlisted", "promoted")


def seat_kind(counts: Mapping[str, int]) -> str:
    """A seat message's type from its counts: one batch's, or several coalesced."""
    # A hold takes seats as a confirmation does; an expiry gives them back as a cancellation.
    taken = counts.get("confirmed", 0) + counts.get("held", 0)
    freed = counts.get("cancelled", 0) + counts.get("expired", 0)
    if taken and freed:
        return "seat_update"
    if taken or freed:
        return "booking_created" if taken else "booking_cancelled"
    return "line_update"


def seat_message(decisions: Sequence[Decision]) -> tuple[str, dict[str, Any]] | None:
    if not decisions:
        return None
    confirmed = sum(1 for d in decisions if d.status == "confirmed")
    held = sum(1 for d in decisions if d.status == "held")
    cancelled = sum(1 for d in decisions if d.status == "cancelled")
    expired = sum(1 for d in decisions if d.status == "expired")
    waitlisted = sum(1 for d in decisions if d.status == "waitlisted")
    kind = seat_kind(
        {"confirmed": confirmed, "held": held, "cancelled": cancelled, "expired": expired}
    )
    last = decisions[-1]
    return kind, {
        "eventId": last.event_id,
        "availableSeats": last.available_seats,
        "seatCapacity": last.seat_capacity,
        "version": last.version,
        "timestamp": now_iso(),
        "confirmed": confirmed,
        "cancelled": cancelled,
        "held": held,
        "expired": expired,
        "rejected": len(decisions) - confirmed - held - cancelled - expired - waitlisted,
        "waitlisted": waitlisted,
        "promoted": sum(1 for d in decisions if d.promoted),
        "line": {
            "through": last.line_through,
            "gone": list(last.line_gone),
            "waiting": last.line_waiting,
            "waitlisted": last.waitlist_length,
        },
    }


def status_message(decision: Decision, timestamp: str | None = None) -> dict[str, Any]:
    return {
        "bookingId": decision.booking_id,
        "eventId": decision.event_id,
        "status": decision.status,
        "reason": decision.reason,
        "quantity": decision.quantity,
        "availableSeats": decision.seats_left,
        "decidedAt": decision.decided_at.isoformat() if decision.decided_at else None,
        "queueSeq": decision.queue_seq,
        "queuePosition": decision.queue_position,
        "promoted": decision.promoted,
        "expiresAt": decision.expires_at.isoformat() if decision.expires_at else None,
        "timestamp": timestamp or now_iso(),
    }


# Publishes ARGV as (channel, message) pairs, in order: a batch's messages in one command and
# one reply, where a pipeline of PUBLISH commands cost a reply to parse per decision (a
# quarter of the worker's Python time in a drain).
PUBLISH_ALL = """
for i = 1, #ARGV, 2 do
    redis.call('PUBLISH', ARGV[i], ARGV[i + 1])
end
return #ARGV / 2
"""


def publish_decisions(client: redis.Redis, decisions: Sequence[Decision]) -> None:
    if not decisions:
        return
    args: list[str] = []
    seat = seat_message(decisions)
    if seat is not None:  # always, for a batch
        kind, data = seat
        args += (event_channel(decisions[0].event_id), encode(kind, data))
    stamp = now_iso()  # one clock read per batch: they were all published together
    statuses = [{**status_message(d, stamp), "userId": d.user_id} for d in decisions]
    args += (decisions_channel(), encode("booking_statuses", {"decisions": statuses}))
    _publish_all(client)(args=args)


def _publish_all(client: redis.Redis) -> Any:
    """The script object for this client, registered once (it reloads itself after NOSCRIPT)."""
    script = getattr(client, "_ebs_publish_all", None)
    if script is None:
        script = client.register_script(PUBLISH_ALL)
        client._ebs_publish_all = script  # type: ignore[attr-defined]
    return script
