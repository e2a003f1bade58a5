"""What operators rely on: Flower behind basic auth, `make run` refusing an open Flower in
production or a busy port, and task arguments that are ids and counts only (Flower shows them)."""

from __future__ import annotations

import inspect
import os
import socket
import subprocess

import httpx
import pytest

from devstack import BIN, ROOT, free_port, wait_until
from tests.conftest import ManagedProcess, process_env


def test_flower_answers_only_with_basic_auth(engine):
    port = free_port()
    flower = ManagedProcess("flower")
    flower.spawn([str(BIN / "celery"), "-A", "worker.app", "flower", "--address=127.0.0.1",
                  f"--port={port}", "--basic-auth=ops:s3cret"], process_env())  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{url}/healthcheck", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 60, "flower")
        assert httpx.get(f"{url}/", timeout=5).status_code == 401
        assert httpx.get(f"{url}/", auth=("ops", "wrong"), timeout=5).status_code == 401
        assert httpx.get(f"{url}/", auth=("ops", "s3cret"), timeout=5).status_code == 200
        # Flower 2.2 served /metrics to anyone; flowerconfig.py puts it behind the same auth.
        assert httpx.get(f"{url}/metrics", timeout=5).status_code == 401
        assert httpx.get(f"{url}/metrics", auth=("ops", "wrong"), timeout=5).status_code == 401
        metrics = httpx.get(f"{url}/metrics", auth=("ops", "s3cret"), timeout=5)
        assert metrics.status_code == 200 and "flower_" in metrics.text
    finally:
        flower.stop()


def test_make_run_serves_flower_on_loopback_with_basic_auth():
    script = (ROOT / "scripts" / "run.sh").read_text()
    flower = next(line for line in script.splitlines() if " flower " in line)
    assert "--address=127.0.0.1" in flower and '--port="$FLOWER_PORT"' in flower
    assert '--basic-auth="$FLOWER_AUTH"' in script


def run_sh(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`make run`'s last step, expected to refuse: a hang guard, not a measurement."""
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "run.sh")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_run_refuses_to_start_in_production_without_flower_credentials(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWER_", "BCRYPT_"))}
    # Empty rather than unset, so a developer's .env cannot fill them in.
    env |= {
        "APP_ENV": "production",
        "JWT_SECRET": "p" * 40,
        "FLOWER_USER": "",
        "FLOWER_PASSWORD": "",
    }
    result = run_sh(env)
    assert result.returncode == 1
    assert "FLOWER_USER and FLOWER_PASSWORD must be set" in result.stderr
    assert "Uvicorn running" not in result.stdout + result.stderr


@pytest.mark.parametrize(("setting", "what"), [("PORT", "the API"), ("FLOWER_PORT", "Flower")])
def test_run_says_in_one_line_that_a_port_is_taken_and_starts_nothing(setting, what):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        env = process_env(PORT=str(free_port()), FLOWER_PORT=str(free_port())) | {
            setting: str(port)
        }
        result = run_sh(env)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: port {port} ({setting}, {what}) is already in use; free it or set {setting}"
    ]
    assert "stopping" not in result.stdout  # nothing was started, so nothing to stop


def test_tasks_take_ids_not_personal_data():
    import worker.tasks  # noqa: F401  (registers the tasks)
    from worker.app import app

    ours = {name: task for name, task in app.tasks.items() if not name.startswith("celery.")}
    assert set(ours) == {
        "bookings.process_event",
        "bookings.sweep",
        "bookings.warn_holds",
        "webhooks.deliver",
        "webhooks.sweep",
    }
    for name, task in ours.items():
        for param in inspect.signature(task.run).parameters.values():
            # Ids, or a moment (an ISO time, as the holds' warning timer takes): nothing personal.
            moment = param.name.endswith("_at") and param.annotation in (str, "str")
            assert param.annotation in (int, "int") or moment, (name, param)
