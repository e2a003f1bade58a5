"""The HTTP floor: the same uvicorn configuration answering a trivial route, driven by the same
client as the designs. No design can answer faster or for less CPU than this, so it is the
ceiling the booking path is measured against (docs/BENCHMARKS.md).

``app`` reads the request body and answers a fixed 201 in the booking envelope, as the lean path
does for a confirmed booking, with nothing behind it: no framework, no token, no database.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from bench.cpu import _descendants, cpu_seconds
from bench.load import run_clients
from devstack import BIN, ManagedProcess, free_port

BODY = b'{"success":true,"data":{"bookingId":"bk_floor","status":"confirmed","reason":null}}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body", False):
        pass
    await send({"type": "http.response.start", "status": 201, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def _cpu(process: ManagedProcess) -> float:
    assert process.proc is not None
    return sum(cpu_seconds(pid) or 0.0 for pid in _descendants([process.proc.pid]))


async def measure(
    env: dict[str, str], log_dir: Any, workers: int, tokens: list[str], requests: int, clients: int
) -> dict[str, Any]:
    """Requests per second and server CPU per request of the trivial route."""
    import httpx

    port = free_port()
    server = ManagedProcess("floor", log_dir)
    argv = [str(BIN / "uvicorn"), "bench.floor:app", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--log-level", "warning", "--no-access-log"]  # fmt: skip
    server.spawn(argv, env)

    def up() -> bool:
        try:
            return httpx.post(f"http://127.0.0.1:{port}/", timeout=2).status_code == 201
        except httpx.HTTPError:
            return False

    try:
        server.wait_for(up, 60, "the HTTP floor's uvicorn")
        time.sleep(0.5 * workers)
        url = f"http://127.0.0.1:{port}"
        progress = _Quiet()
        # A warm-up as the designs get, then the measured run.
        await run_clients(url, tokens, 1, requests=min(requests, 1000), clients=clients,
                          wait=30, sync=False, progress=progress)  # fmt: skip
        before = _cpu(server)
        started = time.perf_counter()
        outcomes = await run_clients(url, tokens, 1, requests=requests, clients=clients,
                                     wait=30, sync=False, progress=progress)  # fmt: skip
        seconds = time.perf_counter() - started
        cpu = _cpu(server) - before
    finally:
        server.stop(signal.SIGTERM)  # the group: every uvicorn worker
    answered = sum(1 for o in outcomes if o.final == "confirmed")
    return {
        "requests": requests,
        "answered": answered,
        "perSecond": round(answered / seconds, 1),
        "cpuSeconds": round(cpu, 2),
        "cpuMsPerRequest": round(1000 * cpu / max(1, answered), 3),
    }


class _Quiet:
    def update(self, _: int) -> None:
        pass
