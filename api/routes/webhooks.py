"""Webhook endpoints and their delivery log (docs/API.md, "Webhooks"; docs/WEBHOOKS.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from celery import Celery
from fastapi import APIRouter, Depends, Query, status

from api.deps import CurrentUser, SessionDep, SettingsDep, app_state
from api.envelope import Envelope, error_responses, ok
from common.tasks import DELIVER_WEBHOOKS, WEBHOOKS_QUEUE
from common.webhooks import service
from common.webhooks.schemas import (
    DeliveryPage,
    DeliveryRead,
    MessageState,
    Redeliver,
    Redelivered,
    SecretRotate,
    WebhookCreate,
    WebhookPage,
    WebhookRead,
    WebhookSecret,
    WebhookUpdate,
)

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"])
CeleryDep = Annotated[Celery, Depends(app_state("celery"))]


def kicker(celery: CeleryDep) -> Callable[[int], object]:
    """Send the endpoint's deliverer (after the commit, through ``on_commit``). If the broker
    is down, the webhook sweeper sends it once it is back: the messages are in PostgreSQL."""

    def kick(endpoint_id: int) -> None:
        celery.send_task(DELIVER_WEBHOOKS, args=[endpoint_id], queue=WEBHOOKS_QUEUE)

    return kick


KickDep = Annotated[Callable[[int], object], Depends(kicker)]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=Envelope[WebhookSecret],
    responses=error_responses(400, 401, 403, 404, 413),
)
def create_webhook(
    body: WebhookCreate, session: SessionDep, user: CurrentUser, settings: SettingsDep
) -> dict:
    """Admins, for any or one event; an event's creator, for that event. The response holds
    the signing secret: the only time it is shown."""
    endpoint = service.create_endpoint(session, user, body, settings)
    return ok(WebhookSecret.model_validate(endpoint))


@router.get("", response_model=Envelope[WebhookPage], responses=error_responses(400, 401))
def list_webhooks(
    session: SessionDep,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> dict:
    """Your endpoints; an admin sees everyone's."""
    rows, total = service.list_endpoints(session, user, limit=limit, offset=offset)
    return ok(WebhookPage(webhooks=rows, total=total, has_more=offset + len(rows) < total))


@router.get(
    "/{webhook_id}", response_model=Envelope[WebhookRead], responses=error_responses(400, 401, 404)
)
def get_webhook(webhook_id: int, session: SessionDep, user: CurrentUser) -> dict:
    """With ``disabledReason`` when the deliverer turned it off."""
    return ok(WebhookRead.model_validate(service.get_endpoint(session, user, webhook_id)))


@router.put(
    "/{webhook_id}",
    response_model=Envelope[WebhookRead],
    responses=error_responses(400, 401, 403, 404, 413),
)
def update_webhook(
    webhook_id: int,
    body: WebhookUpdate,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    kick: KickDep,
) -> dict:
    """Change what is set; ``enabled: true`` on a disabled endpoint clears its failures and
    sends what waited."""
    endpoint = service.update_endpoint(session, user, webhook_id, body, settings, kick)
    return ok(WebhookRead.model_validate(endpoint))


@router.delete(
    "/{webhook_id}", response_model=Envelope[dict], responses=error_responses(400, 401, 404)
)
def delete_webhook(webhook_id: int, session: SessionDep, user: CurrentUser) -> dict:
    """The endpoint, its undelivered messages and its log are gone."""
    service.delete_endpoint(session, user, webhook_id)
    return ok({"deleted": webhook_id})


@router.post(
    "/{webhook_id}/rotate-secret",
    response_model=Envelope[WebhookSecret],
    responses=error_responses(400, 401, 404, 413),
)
def rotate_secret(
    webhook_id: int,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    body: SecretRotate | None = None,
) -> dict:
    """A new secret, shown once. The old one keeps signing beside it (two signatures in
    ``webhook-signature``) for ``graceSeconds`` (default ``WEBHOOK_SECRET_GRACE``)."""
    grace = settings.WEBHOOK_SECRET_GRACE
    if body is not None and body.grace_seconds is not None:
        grace = body.grace_seconds
    endpoint = service.rotate_secret(session, user, webhook_id, grace)
    return ok(WebhookSecret.model_validate(endpoint))


@router.get(
    "/{webhook_id}/deliveries",
    response_model=Envelope[DeliveryPage],
    responses=error_responses(400, 401, 404),
)
def list_deliveries(
    webhook_id: int,
    session: SessionDep,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    state: MessageState | None = None,
) -> dict:
    """Messages, newest first, each with its latest attempts: status code or error, latency
    and the first bytes of the reply."""
    rows, total = service.list_deliveries(
        session, user, webhook_id, limit=limit, offset=offset, state=state
    )
    deliveries = [DeliveryRead.model_validate(row) for row in rows]
    return ok(DeliveryPage(deliveries=deliveries, total=total, has_more=offset + len(rows) < total))


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Envelope[Redelivered],
    responses=error_responses(400, 401, 404),
)
def redeliver_one(
    webhook_id: int, delivery_id: int, session: SessionDep, user: CurrentUser, kick: KickDep
) -> dict:
    """Send one message again, with its webhook-id."""
    count = service.redeliver_one(session, user, webhook_id, delivery_id, kick)
    return ok(Redelivered(redelivered=count))


@router.post(
    "/{webhook_id}/redeliver",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Envelope[Redelivered],
    responses=error_responses(400, 401, 404, 413),
)
def redeliver_since(
    webhook_id: int, body: Redeliver, session: SessionDep, user: CurrentUser, kick: KickDep
) -> dict:
    """Send again every message of the endpoint written since ``since``."""
    count = service.redeliver_since(session, user, webhook_id, body.since, kick)
    return ok(Redelivered(redelivered=count))
