"""What operators rely on: Flower behind basic auth, `make run` refusing an open Flower in
production, and task arguments that are ids and counts only (Flower shows them)."""

from __future__ import annotations

import inspect
import os
import subprocess

import httpx

from tests.conftest import BIN, ROOT, ManagedProcess, free_port, process_env, wait_until


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
    assert "--address=127.0.0.1" in flower and "--port=5555" in flower
    assert '--basic-auth="$FLOWER_AUTH"' in script


def test_run_refuses_to_start_in_production_without_flower_credentials(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWER_", "BCRYPT_"))}
    # Empty rather than unset, so a developer's .env cannot fill them in.
    env |= {
        "APP_ENV": "production",
        "JWT_SECRET": "p" * 40,
        "FLOWER_USER": "",
        "FLOWER_PASSWORD": "",
    }
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "run.sh")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "FLOWER_USER and FLOWER_PASSWORD must be set" in result.stderr
    assert "Uvicorn running" not in result.stdout + result.stderr


def test_tasks_take_ids_not_personal_data():
    import worker.tasks  # noqa: F401  (registers the tasks)
    from worker.app import app

    ours = {name: task for name, task in app.tasks.items() if not name.startswith("celery.")}
    assert set(ours) == {"bookings.process_event", "bookings.sweep"}
    for name, task in ours.items():
        for param in inspect.signature(task.run).parameters.values():
            assert param.annotation in (int, "int"), (name, param)
