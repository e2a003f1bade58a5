"""The clients: C concurrent HTTP clients sending N booking requests and following each one to
its decision, and K WebSocket subscribers watching the event's seat count.

aiohttp rather than httpx: the load generator shares the machine's two cores with the system
under test, and aiohttp spends about a third of httpx's CPU per request here, so less of the
measurement is the client measuring itself. Both designs are driven by the same code.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp

DECIDED_CODES = {
    "SOLD_OUT": "sold_out",
    "LIMIT_EXCEEDED": "limit_exceeded",
    "EVENT_PAST": "event_past",
}


@dataclass(slots=True)
class Outcome:
    """One booking request as the client saw it. Times are epoch seconds (time.time())."""

    sent: float
    post_status: int = 0
    final: str = "error"  # confirmed | rejected | waitlisted | pending (never decided) | error
    reason: str | None = None
    decided: float | None = None
    booking_id: str | None = None
    follow_ups: int = 0
    statuses: list[int] = field(default_factory=list)


def _decision(status: int, body: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """(final, reason, booking id) from a response of either design."""
    if status in (200, 201):
        data = body.get("data", {})
        return data.get("status", "confirmed"), data.get("reason"), data.get("bookingId")
    if status == 202:
        data = body.get("data", {})
        # A waitlisted request is settled for now: nothing moves it until seats come back.
        final = "waitlisted" if data.get("status") == "waitlisted" else "pending"
        return final, None, data.get("bookingId")
    if status == 409:
        error = body.get("error", {})
        details = error.get("details") or [{}]
        booking_id = details[0].get("bookingId") if isinstance(details[0], dict) else None
        reason = DECIDED_CODES.get(error.get("code", ""))
        if reason is not None:
            return "rejected", reason, booking_id
    return "error", None, None


async def _send(
    session: aiohttp.ClientSession, url: str, token: str, event_id: int, wait: int, sync: bool
) -> Outcome:
    outcome = Outcome(sent=time.time())
    headers = {"Authorization": f"Bearer {token}"}
    if not sync:
        headers["Prefer"] = f"wait={wait}"
    path = "/api/bench/bookings-sync" if sync else "/api/bookings"
    try:
        async with session.post(
            url + path, json={"eventId": event_id, "quantity": 1}, headers=headers
        ) as response:
            body = await response.json(content_type=None)
            outcome.post_status = response.status
        outcome.statuses.append(outcome.post_status)
        final, reason, booking_id = _decision(outcome.post_status, body)
        outcome.booking_id = booking_id
        # Still pending when the wait ran out: keep waiting on the booking itself.
        deadline = time.monotonic() + 4 * wait
        while final == "pending" and booking_id and time.monotonic() < deadline:
            outcome.follow_ups += 1
            async with session.get(
                f"{url}/api/bookings/{booking_id}", headers={**headers, "Prefer": f"wait={wait}"}
            ) as response:
                body = await response.json(content_type=None)
                outcome.statuses.append(response.status)
                final, reason, _ = _decision(response.status, body)
        outcome.final, outcome.reason = final, reason
        if final in ("confirmed", "rejected", "waitlisted"):
            outcome.decided = time.time()
    except (TimeoutError, aiohttp.ClientError, ValueError):
        outcome.final = "error"
    return outcome


async def run_clients(
    url: str,
    tokens: list[str],
    event_id: int,
    *,
    requests: int,
    clients: int,
    wait: int,
    sync: bool,
    progress: Any,
    on_outcome: Any = None,
) -> list[Outcome]:
    """``clients`` coroutines share one counter of ``requests``; request i is user i mod U.
    ``on_outcome(outcome)`` is called with each request's outcome as it completes."""
    outcomes: list[Outcome | None] = [None] * requests
    counter = iter(range(requests))
    connector = aiohttp.TCPConnector(limit=clients, limit_per_host=clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=wait + 60)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client() -> None:
            for i in counter:
                outcome = outcomes[i] = await _send(
                    session, url, tokens[i % len(tokens)], event_id, wait, sync
                )
                if on_outcome is not None:
                    on_outcome(outcome)
                progress.update(1)

        await asyncio.gather(*(client() for _ in range(clients)))
    return [o for o in outcomes if o is not None]


@dataclass
class Subscriber:
    """One WebSocket client on the event's channel, recording when each update arrived."""

    index: int
    messages: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    error: str | None = None
    ws: Any = None
    task: asyncio.Task[None] | None = None

    def latest(self) -> dict[str, Any] | None:
        seat = [m for _, m in self.messages if "availableSeats" in m and "version" in m]
        return max(seat, key=lambda m: m["version"]) if seat else None


class Subscribers:
    """K sockets on ``/ws/events/{id}?token=``; ``unavailable`` if the endpoint is not there."""

    def __init__(self, ws_url: str, event_id: int, tokens: list[str], count: int) -> None:
        self.url = f"{ws_url}/ws/events/{event_id}"
        self.event_id = event_id
        self.tokens = tokens
        self.count = count
        self.subscribers: list[Subscriber] = []
        self.unavailable: str | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self.count <= 0:
            self.unavailable = "not requested (K=0)"
            return
        self._session = aiohttp.ClientSession()
        for index in range(self.count):
            sub = Subscriber(index)
            try:
                sub.ws = await self._session.ws_connect(
                    self.url,
                    params={"token": self.tokens[index % len(self.tokens)]},
                    timeout=aiohttp.ClientWSTimeout(ws_close=5),
                )
            except aiohttp.WSServerHandshakeError as exc:
                self.unavailable = f"endpoint answered {exc.status} to the WebSocket handshake"
                break
            except (TimeoutError, aiohttp.ClientError) as exc:
                self.unavailable = f"could not connect: {exc!r}"
                break
            sub.task = asyncio.create_task(self._read(sub))
            self.subscribers.append(sub)
        if self.unavailable:
            await self.stop()
            return
        # A socket the server accepts and closes at once is no subscription either.
        await asyncio.sleep(0.3)
        if all(s.ws.closed for s in self.subscribers):
            self.unavailable = "endpoint closed every socket right after accepting it"
            await self.stop()

    async def _read(self, sub: Subscriber) -> None:
        try:
            async for message in sub.ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                now = time.time()
                try:
                    payload = json.loads(message.data)
                except ValueError:
                    continue
                data = payload.get("data") if isinstance(payload, dict) else None
                # Only this event's seat state (not booking_status or other types).
                if isinstance(data, dict) and data.get("eventId") == self.event_id:
                    if "availableSeats" in data and "version" in data:
                        sub.messages.append((now, {"type": payload.get("type"), **data}))
        except Exception as exc:  # the report says what broke; the run goes on
            sub.error = repr(exc)

    async def settle(self, final_version: int, timeout: float = 5.0) -> None:
        """Give the last update time to arrive before the sockets are judged."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(
                (s.latest() or {}).get("version", -1) >= final_version for s in self.subscribers
            ):
                return
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for sub in self.subscribers:
            if sub.ws is not None and not sub.ws.closed:
                await sub.ws.close()
            if sub.task is not None:
                await asyncio.gather(sub.task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def report(self, final_seats: int, final_version: int, last_change: float | None) -> dict:
        """``last_change``: when the client of the last confirmed booking heard of it."""
        if self.unavailable:
            return {"available": False, "reason": self.unavailable}
        per_socket = []
        lags: list[float] = []
        final_lags: list[float] = []
        for sub in self.subscribers:
            latest = sub.latest()
            for received, message in sub.messages:
                stamp = _epoch(message.get("timestamp"))
                if stamp is not None:
                    lags.append(received - stamp)
            final_at = next(
                (t for t, m in sub.messages if m.get("version") == (latest or {}).get("version")),
                None,
            )
            if final_at is not None and last_change is not None:
                final_lags.append(final_at - last_change)
            per_socket.append(
                {
                    "messages": len(sub.messages),
                    "finalSeats": latest.get("availableSeats") if latest else None,
                    "finalVersion": latest.get("version") if latest else None,
                    "correct": bool(
                        latest
                        and latest.get("availableSeats") == final_seats
                        and latest.get("version") == final_version
                    ),
                    "error": sub.error,
                }
            )
        return {
            "available": True,
            "subscribers": len(per_socket),
            "correct": sum(1 for s in per_socket if s["correct"]),
            "finalSeats": sorted({s["finalSeats"] for s in per_socket}, key=str),
            "expectedSeats": final_seats,
            "messages": sum(s["messages"] for s in per_socket),
            "lagMs": _percentiles([x * 1000 for x in lags]),
            "finalLagMs": _percentiles([x * 1000 for x in final_lags]),
            "sockets": per_socket,
        }


def _epoch(stamp: Any) -> float | None:
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99), "max": round(ordered[-1], 1)}
