#!/usr/bin/env bash
# Run the whole system in the foreground: API, Celery worker, beat and Flower. Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
mkdir -p .run

eval "$("$BIN/python" - <<'PYEOF'
import shlex
import socket
from common.settings import get_settings
s = get_settings()


def taken(port: int) -> bool:
    """Would a server fail to listen on 127.0.0.1:port? (SO_REUSEADDR, as uvicorn and Flower.)"""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


problem = ""
if s.PORT == s.FLOWER_PORT:
    problem = f"PORT and FLOWER_PORT are both {s.PORT}; give Flower another port"
for name, what, port in (("PORT", "the API", s.PORT), ("FLOWER_PORT", "Flower", s.FLOWER_PORT)):
    if not problem and taken(port):
        problem = f"port {port} ({name}, {what}) is already in use; free it or set {name}"
print(f"PORT_PROBLEM={shlex.quote(problem)} FLOWER_PORT={s.FLOWER_PORT}")
user = s.FLOWER_USER or ("" if s.APP_ENV == "production" else "flower")
password = s.FLOWER_PASSWORD.get_secret_value() if s.FLOWER_PASSWORD else (
    "" if s.APP_ENV == "production" else "flower")
print(f"PORT={s.PORT} APP_ENV={s.APP_ENV} LOG_LEVEL={shlex.quote(s.LOG_LEVEL.lower())}")
print(f"FORWARDED_ALLOW_IPS={shlex.quote(s.FORWARDED_ALLOW_IPS)} WS_MAX_SIZE={s.WS_MAX_SIZE}")
print(f"FLOWER_AUTH={shlex.quote(f'{user}:{password}' if user and password else '')}")
import os
cores = os.cpu_count() or 1
print(f"API_WORKERS={s.API_WORKERS or cores} WORKER_CONCURRENCY={s.WORKER_CONCURRENCY or cores}")
PYEOF
)"
if [ -z "$FLOWER_AUTH" ]; then
  echo "error: FLOWER_USER and FLOWER_PASSWORD must be set when APP_ENV=production" >&2
  exit 1
fi
# Before starting anything: a busy port would otherwise end in a traceback after the others start.
if [ -n "$PORT_PROBLEM" ]; then
  echo "error: $PORT_PROBLEM" >&2
  exit 1
fi

pids=()
stop() {
  trap - INT TERM EXIT
  echo "stopping..."
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM EXIT

echo "  $(nproc) cores: $API_WORKERS API processes, worker concurrency $WORKER_CONCURRENCY" \
  "(API_WORKERS, WORKER_CONCURRENCY override)"
# uvicorn reads FORWARDED_ALLOW_IPS itself; unset, it would trust X-Forwarded-For from loopback.
export FORWARDED_ALLOW_IPS
"$BIN/uvicorn" api.main:app --host 127.0.0.1 --port "$PORT" --log-level "$LOG_LEVEL" \
  --workers "$API_WORKERS" --http api.protocol:HttpProtocol --ws-max-size "$WS_MAX_SIZE" &
pids+=($!)
# Restart a process that exits on its own: Celery's worker stops for good when Redis drops while
# it holds unacknowledged tasks (a kombu bug). Nothing is lost meanwhile (requests are in
# PostgreSQL), but nothing is decided until a supervisor restarts it; in compose,
# `restart: unless-stopped` does this. TERM is passed on, so the worker still stops warm.
# The child runs in its own session, so Ctrl-C reaches it only as stop()'s TERM through the
# supervisor, which then exits: a stop is never taken for a crash and "restarted". (A background
# subshell of a script ignores SIGINT, so it cannot trap it; Celery would exit on it alone.)
supervise() {
  local name=$1
  shift
  (
    child=
    trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 0' TERM
    while true; do
      setsid "$@" &
      child=$!
      wait "$child" && status=0 || status=$?
      echo "$name exited with status $status; restarting in 1 s" >&2
      sleep 1
    done
  ) &
  pids+=($!)
}

supervise worker "$BIN/celery" -A worker.app worker -Q bookings,maintenance,webhooks --concurrency "$WORKER_CONCURRENCY" \
  --hostname "worker@%h" --loglevel "$LOG_LEVEL"
supervise beat "$BIN/celery" -A worker.app beat --schedule .run/celerybeat-schedule \
  --loglevel "$LOG_LEVEL"
"$BIN/celery" -A worker.app flower --address=127.0.0.1 --port="$FLOWER_PORT" \
  --basic-auth="$FLOWER_AUTH" --loglevel "$LOG_LEVEL" &
pids+=($!)

echo
echo "  API      http://127.0.0.1:$PORT/docs   (live page: http://127.0.0.1:$PORT/live)"
echo "  Flower   http://127.0.0.1:$FLOWER_PORT        (user ${FLOWER_AUTH%%:*})"
echo "  Sample logins: admin@example.com / john@example.com, password123.  Ctrl-C stops all."
echo
wait -n "${pids[@]}"
