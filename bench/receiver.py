"""The webhook benchmark's receiver: a process of its own on loopback that answers every POST 200
at once and notes when it came (``python -m bench.receiver --port P``).

It does no more per request than a receiver must (read the body, answer), so what it costs the
machine is small and counted apart. Signatures are checked after the sale, not while it runs:
``POST /_verify`` with ``{path: secret}`` verifies every body received on each path with the
``standardwebhooks`` verifier (from the ``from``-th on: the verifier refuses a timestamp
older than five minutes, so each sale's messages are verified right after it). ``GET /_count``
says how many arrived; ``GET /_records`` gives ``[path, webhook-id, received at, decision
timestamp]`` for each one.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

Record = tuple[str, str, float, bytes, dict[str, str]]


def make_app() -> web.Application:
    received: list[Record] = []
    app = web.Application()

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        received.append((request.path, request.headers.get("webhook-id", ""), time.time(), body,
                         {k.lower(): v for k, v in request.headers.items()
                          if k.lower().startswith("webhook-")}))  # fmt: skip
        return web.Response(text='{"ok":true}', content_type="application/json")

    async def count(request: web.Request) -> web.Response:
        return web.json_response({"count": len(received)})

    async def records(request: web.Request) -> web.Response:
        start = int(request.query.get("from", "0"))
        rows: list[list[Any]] = []
        for path, msg_id, at, body, _ in received[start:]:
            decided = datetime.fromisoformat(json.loads(body)["timestamp"]).timestamp()
            rows.append([path, msg_id, at, decided])
        return web.json_response(rows)

    async def verify(request: web.Request) -> web.Response:
        secrets: dict[str, str] = await request.json()
        verifiers = {path: Webhook(secret) for path, secret in secrets.items()}
        verified = failed = 0
        for path, _, _, body, headers in received[int(request.query.get("from", "0")) :]:
            try:
                verifiers[path].verify(body, headers)
                verified += 1
            except (KeyError, WebhookVerificationError):
                failed += 1
        return web.json_response({"verified": verified, "failed": failed})

    app.router.add_get("/_count", count)
    app.router.add_get("/_records", records)
    app.router.add_post("/_verify", verify)
    app.router.add_post("/{path:.*}", hook)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.receiver", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
