"""Webhooks: endpoints, the outbox of messages to deliver, and the log of delivery attempts.

- ``webhook_endpoints``: where to send (``url``), what (``event_types``, NULL for all; an
  optional ``event_id``), whether (``enabled``, with ``disabled_reason`` when the deliverer
  turned it off), signed with ``secret`` and, for a grace period after a rotation, with
  ``previous_secret`` too. ``failure_count`` counts consecutive failed attempts and
  ``retry_at`` holds the endpoint's queue back while it fails (common/webhooks/delivery.py).
- ``webhook_messages``: the outbox, one row per decision and subscribed endpoint, written by the
  AFTER INSERT statement trigger ``write_webhook_outbox`` of ``booking_logs``, so in the very
  transaction that decides the booking. No procedure changes: every decision writes its audit
  row already.
- ``webhook_attempts``: each attempt's status code or error, latency and first bytes of reply.

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

# The revision is named once: the SQL file it installs is migrations/sql/<fn>/<revision>.sql.
revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQL = Path(__file__).parents[1] / "sql"
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("description", sa.String(255)),
        sa.Column("event_types", ARRAY(sa.String(40))),
        sa.Column("event_id", sa.Integer()),
        sa.Column("enabled", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("disabled_reason", sa.Text()),
        sa.Column("disabled_at", TZ),
        sa.Column("secret", sa.String(100), nullable=False),
        sa.Column("previous_secret", sa.String(100)),
        sa.Column("previous_secret_until", TZ),
        sa.Column("failure_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("retry_at", TZ),
        sa.Column("created_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["users.id"],
            name=op.f("fk_webhook_endpoints_owner_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["events.id"],
            name=op.f("fk_webhook_endpoints_event_id_events"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoints")),
    )
    op.create_index("idx_webhook_endpoints_owner_id", "webhook_endpoints", ["owner_id"])
    op.create_table(
        "webhook_messages",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("endpoint_id", sa.Integer(), nullable=False),
        sa.Column("log_id", sa.BigInteger(), nullable=False),
        sa.Column("event_type", sa.String(40), nullable=False),
        sa.Column("state", sa.String(12), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("created_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("delivered_at", TZ),
        sa.Column("last_status", sa.Integer()),
        sa.Column("last_error", sa.String(200)),
        sa.CheckConstraint(
            "state IN ('pending', 'delivered', 'failed')", name=op.f("ck_webhook_messages_state")
        ),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoints.id"],
            name=op.f("fk_webhook_messages_endpoint_id_webhook_endpoints"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_messages")),
    )
    # The delivery log, newest first, and redelivery since a time.
    op.create_index(
        "idx_webhook_messages_endpoint_id_id", "webhook_messages", ["endpoint_id", "id"]
    )
    # The deliverer's queue: an endpoint's messages still to send, oldest first.
    op.create_index(
        "idx_webhook_messages_pending",
        "webhook_messages",
        ["endpoint_id", "id"],
        postgresql_where="state = 'pending'",
    )
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("attempted_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("status_code", sa.Integer()),
        sa.Column("error", sa.String(200)),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("response_head", sa.Text()),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["webhook_messages.id"],
            name=op.f("fk_webhook_attempts_message_id_webhook_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
    )
    op.create_index("idx_webhook_attempts_message_id", "webhook_attempts", ["message_id"])
    op.execute((SQL / "write_webhook_outbox" / f"{revision}.sql").read_text())
    op.execute(
        "CREATE TRIGGER booking_logs_webhooks AFTER INSERT ON booking_logs"
        " REFERENCING NEW TABLE AS decided FOR EACH STATEMENT"
        " EXECUTE FUNCTION write_webhook_outbox()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER booking_logs_webhooks ON booking_logs")
    op.execute("DROP FUNCTION write_webhook_outbox()")
    op.drop_table("webhook_attempts")
    op.drop_table("webhook_messages")
    op.drop_table("webhook_endpoints")
