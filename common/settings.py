"""Settings shared by the API, the worker, the CLI and ``celeryconfig``.

Read from the environment and ``.env``; see ``.env.example`` and docs/configuration.md.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_JWT_SECRET = "change-me-dev-only-secret-change-me"
PRODUCTION_BCRYPT_ROUNDS = 12


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    APP_ENV: Literal["development", "test", "production"] = "development"
    DATABASE_URL: str = "postgresql+psycopg2://postgres@127.0.0.1:5432/event_booking"
    REDIS_URL: str = "redis://127.0.0.1:6379/0"
    CELERY_BROKER_URL: str | None = Field(
        default=None, description="Celery's broker (amqp://... for RabbitMQ); unset: REDIS_URL"
    )
    JWT_SECRET: SecretStr = SecretStr(DEFAULT_JWT_SECRET)
    JWT_EXPIRES_IN: int = Field(default=86_400, gt=0, description="token lifetime, seconds")
    CORS_ORIGINS: Annotated[list[str], NoDecode] = [
        "http://localhost:8000",
        "http://127.0.0.1:8000",
    ]
    ALLOWED_HOSTS: Annotated[list[str], NoDecode] = ["localhost", "127.0.0.1", "[::1]"]
    PORT: int = 8000
    # Read by uvicorn itself from the environment (scripts/run.sh exports it from here).
    FORWARDED_ALLOW_IPS: str = Field(
        default="", description="proxies whose X-Forwarded-For is trusted; none by default"
    )
    LOG_LEVEL: str = "INFO"
    BCRYPT_ROUNDS: int = Field(default=PRODUCTION_BCRYPT_ROUNDS, ge=4, le=16)
    BCRYPT_CONCURRENCY: int = Field(
        default=4, ge=1, description="password hashes/checks at once per API process"
    )

    DB_POOL_SIZE: int = 20
    DB_MAX_OVERFLOW: int = 10
    # Bounds on every wait of the API on PostgreSQL (the worker: connect and reply only).
    DB_CONNECT_TIMEOUT: int = Field(default=5, ge=1, description="seconds to open a connection")
    DB_POOL_TIMEOUT: float = Field(default=5.0, gt=0, description="seconds to wait for the pool")
    DB_STATEMENT_TIMEOUT: float = Field(
        default=30.0, ge=0, description="seconds one statement may run; 0 means no limit"
    )
    DB_LOCK_TIMEOUT: float = Field(
        default=5.0, ge=0, description="seconds one statement may wait for a lock; 0: no limit"
    )
    DB_REPLY_TIMEOUT: float = Field(
        default=35.0, gt=0, description="seconds without a byte from PostgreSQL: it is gone"
    )

    # Booking pipeline.
    BATCH_SIZE: int = Field(default=500, ge=1, le=10_000)
    SWEEP_INTERVAL: float = Field(default=10.0, gt=0, description="seconds between sweeps")
    SWEEP_PENDING_AFTER: float = Field(
        default=15.0, gt=0, description="a booking pending this long is re-signalled"
    )
    SIGNAL_TTL: int = Field(default=30, gt=0, description="seconds a per-event signal dedups")
    SIGNAL_TIMEOUT: float = Field(
        default=1.0, gt=0, description="seconds intake waits for Redis to take a signal"
    )
    MAX_WAIT: int = 30
    BOOKING_DEADLINE: float = Field(
        default=10.0, gt=0, description="seconds a booking POST takes at most, besides its wait"
    )
    MAX_PENDING_PER_USER: int = Field(
        default=20, ge=1, description="undecided booking requests one user may have; then 429"
    )
    QUEUE_MAX_PER_EVENT: int = Field(
        default=50_000, ge=1, description="requests one event's line may hold; then 503"
    )

    # Holds and payments (docs/API.md, "Holds and payment").
    HOLD_WARNING_SECONDS: float = Field(
        default=60.0,
        ge=0,
        description="seconds before a hold ends that its owner is warned (hold_expiring); 0: never",
    )
    HOLD_TIMER_HORIZON: float = Field(
        default=600.0,
        gt=0,
        le=1800,
        description="seconds before a hold ends that its expiry timer is sent; later ends are"
        " sent by the sweeper as they come this near (below the broker's visibility timeout)",
    )
    PAYMENT_WEBHOOK_SECRET: SecretStr | None = Field(
        default=None,
        description="the Standard Webhooks secret (whsec_...) payment callbacks are signed with;"
        " unset: POST /api/payments/callback answers 503 PAYMENTS_NOT_CONFIGURED",
    )
    PAYMENT_WEBHOOK_TOLERANCE: int = Field(
        default=300, ge=1, le=300, description="seconds a callback's webhook-timestamp may be off"
    )

    # Webhooks (docs/WEBHOOKS.md).
    WEBHOOK_ALLOWED_NETWORKS: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="networks (CIDR) webhooks may go to although private or loopback; unset:"
        " loopback in development and test, none in production",
    )
    WEBHOOK_CONNECT_TIMEOUT: float = Field(default=3.0, gt=0, le=30, description="seconds")
    WEBHOOK_TIMEOUT: float = Field(
        default=10.0, gt=0, le=60, description="seconds a receiver has to answer (each read)"
    )
    WEBHOOK_DISABLE_AFTER: int = Field(
        default=12, ge=1, description="consecutive failed attempts that disable an endpoint"
    )
    WEBHOOK_SECRET_GRACE: int = Field(
        default=86_400, ge=0, description="seconds the old secret still signs after a rotation"
    )
    WEBHOOK_SWEEP_INTERVAL: float = Field(
        default=5.0, gt=0, description="seconds between the webhook sweeper's runs"
    )
    WEBHOOK_RETRY_DELAYS: Annotated[list[float], NoDecode] = Field(
        default=[5, 30, 120, 300, 900, 1800, 3600, 7200, 14400, 21600, 28800],
        description="seconds before the retry after the 1st, 2nd, ... consecutive failure"
        " (the last repeats), each with +-20 % jitter",
    )

    # Abuse limits (fixed one-minute windows in Redis).
    LOGIN_ATTEMPTS_PER_ACCOUNT: int = Field(default=5, ge=1, description="per email per window")
    LOGIN_ATTEMPTS_PER_ADDRESS: int = Field(default=20, ge=1, description="per client IP")
    LOGIN_WINDOW: int = Field(default=60, ge=1, description="seconds")
    SIGNUP_ATTEMPTS_PER_ADDRESS: int = Field(default=10, ge=1, description="per client IP")
    SIGNUP_WINDOW: int = Field(default=60, ge=1, description="seconds")

    # Operations.
    FLOWER_PORT: int = Field(default=5555, ge=1, le=65535)
    FLOWER_USER: str | None = None
    FLOWER_PASSWORD: SecretStr | None = None
    METRICS_TOKEN: SecretStr | None = None
    WS_MAX_SUBSCRIPTIONS: int = 20
    WS_QUEUE_SIZE: int = 100
    WS_HEARTBEAT_INTERVAL: float = Field(
        default=25.0, gt=0, description="seconds between server heartbeats on each WebSocket"
    )
    WS_SEND_TIMEOUT: float = Field(
        default=10.0, gt=0, description="a WebSocket that takes no frame for this long is dropped"
    )
    # Enforced by uvicorn, not the app: every uvicorn command line passes it as --ws-max-size
    # (scripts/run.sh, Dockerfile, docker-compose.yml, devstack.py). At least 4 bytes for each
    # of a command's 4,096 characters, so the app's own MESSAGE_TOO_LARGE answer stays reachable.
    WS_MAX_SIZE: int = Field(
        default=65_536,
        ge=16_384,
        description="bytes of the largest WebSocket message from a client",
    )
    HEALTH_TIMEOUT: float = Field(
        default=2.0, gt=0, description="seconds /health waits for each service to answer"
    )

    # The API's lean path (docs/configuration.md, "Lean path").
    ACCESS_LOG: bool = Field(default=True, description="one JSON line per HTTP request")
    LEAN_PATH: bool = Field(default=True, description="plain booking requests skip the framework")
    API_THREADS: int = Field(default=0, ge=0, description="threadpool size; 0 = DB_POOL_SIZE")
    TOKEN_CACHE_SIZE: int = Field(default=10_000, ge=0, description="verified tokens kept; 0 off")
    TOKEN_CACHE_TTL: float = Field(
        default=60.0, ge=0, description="seconds a verified token is trusted without a check"
    )
    SEAT_SNAPSHOT_MAX_AGE: float = Field(
        default=1.0, ge=0, description="seconds a seat snapshot may refuse without a DB read"
    )
    INTAKE_BATCH_WINDOW: float = Field(
        default=0.002, ge=0, le=0.1, description="seconds intake gathers requests per commit"
    )
    INTAKE_BATCH_SIZE: int = Field(default=200, ge=1, le=5_000)
    INTAKE_WRITERS: int = Field(default=2, ge=1, le=32, description="batches in flight at once")

    # `make run` (scripts/run.sh): 0 = one per CPU core.
    API_WORKERS: int = Field(default=0, ge=0, description="uvicorn worker processes")
    WORKER_CONCURRENCY: int = Field(default=0, ge=0, description="Celery worker processes")

    # Slow and idle clients (docs/OPERATIONS.md, "Connections").
    HTTP_HEADER_TIMEOUT: float = Field(
        default=10.0, gt=0, description="seconds to send a request's headers, else closed"
    )
    HTTP_BODY_TIMEOUT: float = Field(
        default=30.0, gt=0, description="seconds to send a request's body, else 408"
    )
    WS_COALESCE_INTERVAL: float = Field(
        default=0.1, ge=0, le=5, description="seconds between seat messages per event; 0 = each"
    )
    WS_LINE_INTERVAL: float = Field(
        default=1.0,
        ge=0,
        le=30,
        description="seconds between seat messages that move only the line",
    )
    WS_SEAT_DELIVERIES: int = Field(
        default=10_000,
        ge=0,
        description="seat messages per second one process writes per event before its interval"
        " grows with the watchers (up to WS_LINE_INTERVAL); 0 = never grows",
    )
    WS_WRITE_BUFFER: int = Field(
        default=262_144, ge=4096, description="bytes unsent to one socket before it is dropped"
    )
    WS_MAX_PER_USER: int = Field(default=10, ge=1, description="open WebSockets per user")
    WS_USER_RECHECK: float = Field(
        default=10.0, ge=0, description="seconds a user found active opens sockets unchecked"
    )
    WS_COMMANDS_PER_SECOND: int = Field(
        default=50, ge=1, description="commands per socket per second; twice that closes it"
    )

    @field_validator("CORS_ORIGINS", "ALLOWED_HOSTS", "WEBHOOK_ALLOWED_NETWORKS", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("WEBHOOK_RETRY_DELAYS", mode="before")
    @classmethod
    def _split_delays(cls, value: object) -> object:
        if isinstance(value, str):
            return [float(v) for v in value.split(",") if v.strip()]
        return value

    @model_validator(mode="after")
    def _reply_outlasts_statements(self) -> Settings:
        # A statement the server still runs would be cut off by the client, its outcome unknown.
        if self.DB_STATEMENT_TIMEOUT and self.DB_REPLY_TIMEOUT <= self.DB_STATEMENT_TIMEOUT:
            raise ValueError("DB_REPLY_TIMEOUT must be longer than DB_STATEMENT_TIMEOUT")
        return self

    @model_validator(mode="after")
    def _enforce_production_rules(self) -> Settings:
        if self.APP_ENV != "production":
            return self
        secret = self.JWT_SECRET.get_secret_value()
        if secret == DEFAULT_JWT_SECRET or len(secret.encode()) < 32:
            raise ValueError(
                "JWT_SECRET must be set to a non-default value of at least 32 bytes in production"
            )
        if self.BCRYPT_ROUNDS < PRODUCTION_BCRYPT_ROUNDS:
            raise ValueError(f"BCRYPT_ROUNDS below {PRODUCTION_BCRYPT_ROUNDS} is for tests only")
        return self

    @property
    def webhook_allowed_networks(self) -> list[str]:
        """Where webhooks may go although the address is not public (docs/WEBHOOKS.md)."""
        if self.WEBHOOK_ALLOWED_NETWORKS is not None:
            return self.WEBHOOK_ALLOWED_NETWORKS
        return [] if self.APP_ENV == "production" else ["127.0.0.0/8", "::1/128"]

    @property
    def broker_url(self) -> str:
        """Where tasks go: RabbitMQ or another broker if set, else the Redis of everything else
        (signals, pub/sub, rate limits, metrics stay in Redis either way)."""
        return self.CELERY_BROKER_URL or self.REDIS_URL

    @property
    def sqlalchemy_url(self) -> str:
        url = self.DATABASE_URL
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg2://" + url.removeprefix("postgresql://")
        return url


@lru_cache
def get_settings() -> Settings:
    return Settings()
