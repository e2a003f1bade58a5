#!/usr/bin/env bash
# Make sure PostgreSQL, Redis and (if it is the configured broker) RabbitMQ answer at the
# configured URLs; start the local ones if not.
# Used by `make run` and `make test`, so neither depends on a step done by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

read -r PG_HOST PG_PORT REDIS_HOST REDIS_PORT AMQP_HOST AMQP_PORT < <("$PY" - <<'PYEOF'
from urllib.parse import urlparse
from common.settings import get_settings
s = get_settings()
pg = urlparse(s.DATABASE_URL.replace("+psycopg2", ""))
rd = urlparse(s.REDIS_URL)
mq = urlparse(s.broker_url)
amqp = (mq.hostname or "127.0.0.1", mq.port or 5672) if mq.scheme in ("amqp", "pyamqp") else ("-", "-")
print(pg.hostname or "127.0.0.1", pg.port or 5432, rd.hostname or "127.0.0.1", rd.port or 6379, *amqp)
PYEOF
)

pg_up() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; }
redis_up() { [ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]; }
amqp_up() { timeout 2 bash -c "exec 3<>/dev/tcp/$AMQP_HOST/$AMQP_PORT" 2>/dev/null; }

wait_for() {
  local name=$1 check=$2
  for _ in $(seq 1 60); do
    if $check; then return 0; fi
    sleep 0.5
  done
  echo "error: $name does not answer" >&2
  exit 1
}

if ! pg_up; then
  echo "PostgreSQL at $PG_HOST:$PG_PORT does not answer; starting the local cluster"
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start || true
  fi
  wait_for PostgreSQL pg_up
fi

if ! redis_up; then
  echo "Redis at $REDIS_HOST:$REDIS_PORT does not answer; starting a local server"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for Redis redis_up
fi

broker=""
if [ "$AMQP_HOST" != "-" ]; then
  if ! amqp_up; then
    echo "RabbitMQ at $AMQP_HOST:$AMQP_PORT (CELERY_BROKER_URL) does not answer; starting the local server"
    rabbitmq-server -detached
    # The Erlang VM takes several seconds before it listens.
    for _ in $(seq 1 4); do amqp_up && break; sleep 5; done
    wait_for RabbitMQ amqp_up
  fi
  broker=" and RabbitMQ $AMQP_HOST:$AMQP_PORT"
fi
echo "services: PostgreSQL $PG_HOST:$PG_PORT, Redis $REDIS_HOST:$REDIS_PORT$broker answer"
