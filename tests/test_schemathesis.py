"""The OpenAPI schema is a contract: schemathesis generates requests for every operation, valid
and invalid, and checks that no response is a 5xx and every response matches what the schema
declares (status, content type, headers, body). Requests carry a real user's token through
schemathesis' auth hook, so its own checks can also drop or spoil it (ST401 ignored auth).

Two checks are excluded, on purpose:

- ``allow_header_conformance`` (ST205, the ``Allow`` header answering ``OPTIONS``): Starlette
  answers a 405 with the methods of the first route that matched the path, and FastAPI makes one
  route per method, so ``OPTIONS /api/events`` gets ``Allow: GET`` where the path also has POST.
  A framework behaviour, harmless to clients; CORS preflights are answered by the middleware.
- ``positive_data_acceptance`` (ST202): it expects every schema-valid request to succeed, but
  some rules cannot be written in a JSON schema: ``eventDate`` must be in the future, ``quantity``
  at most the event's own ``maxSeatsPerUser``, and email-validator refuses reserved domains such
  as ``.test``. Those are 400s by design (tests/test_events.py, tests/test_hostile.py).

What it found and we fixed: an ``offset`` past bigint on the bookings lists was a 500 (now capped
like the events list), a NUL character in ``q`` (or any text) was a 500 (now 400, see
api/errors.py), the 254-character email limit was stated as 255, two event routes did not
document their 400, and (in CI) a 256-character name with a leading tab was accepted because
it was trimmed before its 255 limit was checked (see common/schemas.py).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import allow_header_conformance, positive_data_acceptance

from api.app import create_app
from common.security import create_access_token
from common.settings import get_settings
from tests.conftest import ApiProcess

EXCLUDED = [allow_header_conformance, positive_data_acceptance]
# An invalid body can also be refused for its size before it is read: a 10,001-character
# description of \u-escaped astral characters is 120 KB, so 413 counts as a rejection too.
# schemathesis' own list, plus 413.
REJECTED = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5xx"]
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": REJECTED}}}
)
# Built once for the schema only; requests go to a real uvicorn serving the same app.
schema = schemathesis.openapi.from_dict(create_app().openapi(), config=CONFIG)

# Per operation: enough to walk every parameter, cheap enough for CI. The draw is the same on
# every run (tests/conftest.py); to hunt further: HYPOTHESIS_PROFILE=hunt SCHEMATHESIS_EXAMPLES=500.
EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "25"))
# Tables restart their ids for each test, so the `caller` fixture's user is always this id; a
# token can then be minted whenever schemathesis asks, collection time included.
USER_ID = 2


@schema.auth(refresh_interval=None)
class BearerToken:
    def get(self, case: Any, ctx: Any) -> str:
        return create_access_token(USER_ID, "user", get_settings())

    def set(self, case: Any, data: str, ctx: Any) -> None:
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"


@pytest.fixture(scope="module")
def api(engine):
    """uvicorn itself: schemathesis' own follow-up requests (dropping the token, say) need an
    address to go to, not an in-process app."""
    # With a payment secret, as a deployment that takes payments: without one the callback is
    # 503 PAYMENTS_NOT_CONFIGURED by design (tests/test_payments.py), which is no schema finding.
    proc = ApiProcess("schemathesis-api", PAYMENT_WEBHOOK_SECRET="whsec_" + "A" * 32).start()
    yield proc
    proc.stop()


@pytest.fixture
def caller(api, make_user, make_event):
    admin = make_user("admin")
    make_event(created_by=admin.id)  # so that some ids exist
    assert make_user().id == USER_ID
    return api


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_matches_its_schema(case, caller):
    response = case.call_and_validate(base_url=caller.url, excluded_checks=EXCLUDED)
    assert response.status_code < 500, (case.method, case.formatted_path, response.text)
