"""Webhook endpoints (who may register what) and their delivery log. Services flush; callers
commit. Delivering is common/webhooks/deliverer.py."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from common.bookings.models import BookingLog
from common.db import on_commit
from common.errors import Forbidden, WebhookMessageNotFound, WebhookNotFound
from common.events.service import can_manage, get_event
from common.settings import Settings
from common.users.models import User
from common.webhooks.delivery import resolve
from common.webhooks.messages import message_id, new_secret
from common.webhooks.models import WebhookAttempt, WebhookEndpoint, WebhookMessage
from common.webhooks.schemas import WebhookCreate, WebhookUpdate

# Sends the task that delivers an endpoint's due messages (by name: "webhooks.deliver").
Kick = Callable[[int], object]
ATTEMPTS_SHOWN = 20  # per message in the delivery log, newest


def _check_scope(session: Session, actor: User, event_id: int | None) -> None:
    """Admins register endpoints for anything; an event's creator, for that event only."""
    if actor.is_admin:
        if event_id is not None:
            get_event(session, event_id)  # 404 for an event that does not exist
        return
    if event_id is None:
        raise Forbidden("Only admins can receive every event's bookings; name your event")
    if not can_manage(actor, get_event(session, event_id)):
        raise Forbidden("Only an admin or the event's creator can receive its bookings")


def create_endpoint(
    session: Session, actor: User, data: WebhookCreate, settings: Settings
) -> WebhookEndpoint:
    _check_scope(session, actor, data.event_id)
    url = str(data.url)
    resolve(url, settings.webhook_allowed_networks)
    endpoint = WebhookEndpoint(
        owner_id=actor.id,
        url=url,
        description=data.description,
        event_types=data.event_types,
        event_id=data.event_id,
        enabled=data.enabled,
        secret=new_secret(),
    )
    session.add(endpoint)
    session.flush()
    session.refresh(endpoint)
    return endpoint


def list_endpoints(
    session: Session, actor: User, *, limit: int, offset: int
) -> tuple[list[WebhookEndpoint], int]:
    query = select(WebhookEndpoint)
    if not actor.is_admin:
        query = query.where(WebhookEndpoint.owner_id == actor.id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(WebhookEndpoint.id).limit(limit).offset(offset))
    return list(rows), total


def get_endpoint(
    session: Session, actor: User, endpoint_id: int, *, for_update: bool = False
) -> WebhookEndpoint:
    """The endpoint if the actor may see it: its owner or an admin (404 for anyone else, who
    need not learn that it exists)."""
    query = select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id)
    if for_update:
        query = query.with_for_update()
    endpoint = session.scalar(query)
    if endpoint is None or not (actor.is_admin or endpoint.owner_id == actor.id):
        raise WebhookNotFound()
    return endpoint


def update_endpoint(
    session: Session,
    actor: User,
    endpoint_id: int,
    data: WebhookUpdate,
    settings: Settings,
    kick: Kick,
) -> WebhookEndpoint:
    endpoint = get_endpoint(session, actor, endpoint_id, for_update=True)
    changes = data.model_dump(exclude_unset=True)
    if "event_id" in changes:
        _check_scope(session, actor, changes["event_id"])
    if changes.get("url") is not None:
        changes["url"] = str(changes["url"])
        resolve(changes["url"], settings.webhook_allowed_networks)
    if changes.get("enabled") and not endpoint.enabled:
        # Enabled again by its owner: a fresh start, and what waited goes out now.
        endpoint.failure_count = 0
        endpoint.retry_at = None
        endpoint.disabled_reason = None
        endpoint.disabled_at = None
        on_commit(session, lambda: kick(endpoint_id))
    for field, value in changes.items():
        if field in ("url", "enabled") and value is None:
            continue
        setattr(endpoint, field, value)
    endpoint.updated_at = datetime.now(UTC)
    session.flush()
    return endpoint


def delete_endpoint(session: Session, actor: User, endpoint_id: int) -> None:
    session.delete(get_endpoint(session, actor, endpoint_id, for_update=True))
    session.flush()


def rotate_secret(
    session: Session, actor: User, endpoint_id: int, grace_seconds: int
) -> WebhookEndpoint:
    """A new secret; the old one keeps signing (a second signature) for ``grace_seconds``."""
    endpoint = get_endpoint(session, actor, endpoint_id, for_update=True)
    now = datetime.now(UTC)
    endpoint.previous_secret = endpoint.secret if grace_seconds else None
    endpoint.previous_secret_until = (
        now + timedelta(seconds=grace_seconds) if grace_seconds else None
    )
    endpoint.secret = new_secret()
    endpoint.updated_at = now
    session.flush()
    return endpoint


def list_deliveries(
    session: Session,
    actor: User,
    endpoint_id: int,
    *,
    limit: int,
    offset: int,
    state: str | None,
) -> tuple[list[dict[str, object]], int]:
    """The endpoint's messages, newest first, each with its latest attempts."""
    get_endpoint(session, actor, endpoint_id)
    query = select(WebhookMessage).where(WebhookMessage.endpoint_id == endpoint_id)
    if state is not None:
        query = query.where(WebhookMessage.state == state)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    messages = list(
        session.scalars(query.order_by(WebhookMessage.id.desc()).limit(limit).offset(offset))
    )
    ids = [m.id for m in messages]
    attempts: dict[int, list[WebhookAttempt]] = {i: [] for i in ids}
    for attempt in session.scalars(
        select(WebhookAttempt)
        .where(WebhookAttempt.message_id.in_(ids))
        .order_by(WebhookAttempt.message_id, WebhookAttempt.id.desc())
    ):
        if len(attempts[attempt.message_id]) < ATTEMPTS_SHOWN:
            attempts[attempt.message_id].append(attempt)
    bookings = dict(
        session.execute(
            select(BookingLog.id, BookingLog.booking_id).where(
                BookingLog.id.in_([m.log_id for m in messages])
            )
        ).all()
    )
    rows: list[dict[str, object]] = [
        {
            "id": m.id,
            "message_id": message_id(m.log_id),
            "event_type": m.event_type,
            "state": m.state,
            "attempts": m.attempts,
            "created_at": m.created_at,
            "next_attempt_at": m.next_attempt_at,
            "delivered_at": m.delivered_at,
            "last_status": m.last_status,
            "last_error": m.last_error,
            "booking_id": bookings.get(m.log_id),
            "attempt_log": attempts[m.id],
        }
        for m in messages
    ]
    return rows, total


def _redeliver(session: Session, endpoint_id: int, *conditions: object) -> int:
    result = session.execute(
        update(WebhookMessage)
        .where(WebhookMessage.endpoint_id == endpoint_id, *conditions)  # type: ignore[arg-type]
        .values(state="pending", next_attempt_at=func.now())
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def redeliver_one(
    session: Session, actor: User, endpoint_id: int, message_pk: int, kick: Kick
) -> int:
    """Send one message again (same webhook-id), whatever became of it."""
    get_endpoint(session, actor, endpoint_id)
    if not _redeliver(session, endpoint_id, WebhookMessage.id == message_pk):
        raise WebhookMessageNotFound()
    on_commit(session, lambda: kick(endpoint_id))
    return 1


def redeliver_since(
    session: Session, actor: User, endpoint_id: int, since: datetime, kick: Kick
) -> int:
    """Send again every message of the endpoint written since ``since``."""
    get_endpoint(session, actor, endpoint_id)
    count = _redeliver(session, endpoint_id, WebhookMessage.created_at >= since)
    if count:
        on_commit(session, lambda: kick(endpoint_id))
    return count
