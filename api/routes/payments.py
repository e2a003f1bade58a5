"""The payment callback (docs/API.md, "Holds and payment"): a payment integration confirms a
held booking. Signed the Standard Webhooks way; idempotent by ``webhook-id``."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from api.deps import RedisDep, SessionFactoryDep, SettingsDep
from api.envelope import Envelope, error_responses, ok
from common.bookings import holds
from common.db import session_scope
from common.errors import PaymentsNotConfigured
from common.payments import service
from common.payments.schemas import PaymentCallbackRead

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api/payments", tags=["payments"])


@router.post(
    "/callback",
    response_model=Envelope[PaymentCallbackRead],
    responses=error_responses(400, 401, 413, 503),
)
async def payment_callback(
    request: Request, settings: SettingsDep, factory: SessionFactoryDep, publisher: RedisDep
) -> dict:
    """A payment for a booking: ``{"bookingId", "paymentReference"}`` with the Standard
    Webhooks headers ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``, signed with
    ``PAYMENT_WEBHOOK_SECRET``. 200 with the ``outcome``: ``confirmed`` (the hold is confirmed),
    ``already_confirmed``, or ``refund_required`` and its ``reason`` (recorded: the payment is to
    be given back). A redelivery of a ``webhook-id`` gets its first answer and changes nothing.
    401 ``PAYMENT_SIGNATURE_INVALID`` or ``PAYMENT_TIMESTAMP_STALE``; nothing is recorded."""
    secret = settings.PAYMENT_WEBHOOK_SECRET
    if secret is None:
        raise PaymentsNotConfigured()
    body = await request.body()
    webhook_id, parsed = service.verify(
        secret.get_secret_value(), settings.PAYMENT_WEBHOOK_TOLERANCE, body, request.headers
    )

    def record() -> PaymentCallbackRead:
        with session_scope(factory) as session:
            answer, confirmed = service.record_payment(session, webhook_id, parsed)
            message = holds.confirmed_message(confirmed) if confirmed is not None else None
        if message is not None:  # committed: the owner hears it
            try:
                holds.publish_statuses(publisher, [message])
            except Exception:  # the payment is recorded; the owner reads it on the next look
                logger.warning("could not publish a confirmed hold", exc_info=True)
        return answer

    answer = await run_in_threadpool(record)
    return ok(answer.model_dump(mode="json", by_alias=True))
