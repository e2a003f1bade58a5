"""CPU per pub/sub message for the two ways the API's Hub can read its subscription.

    python -m bench.pubsub_read [--messages 20000] [--redis-url redis://127.0.0.1:6379/9]

``listen()`` blocks in one read with no timeout; ``get_message(timeout=1)`` wraps each read in a
timeout so the loop can look at its stopping flag (api/hub.py). Both drain the same N messages
published beforehand; the figure is the consumer's CPU time per message, twice each, interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import redis
import redis.asyncio as aioredis

PAYLOAD = '{"type":"booking_status","data":{"bookingId":"bk_0","status":"confirmed"}}'


async def cpu_per_message(redis_url: str, messages: int, mode: str) -> float:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.psubscribe("bench:pubsub:*")
    publisher = redis.Redis.from_url(redis_url)
    pipe = publisher.pipeline(transaction=False)
    for i in range(messages):
        pipe.publish(f"bench:pubsub:{i % 50}", PAYLOAD)
    pipe.execute()
    publisher.close()
    received = 0
    started = time.process_time()
    if mode == "listen":
        async for _ in pubsub.listen():
            received += 1
            if received == messages:
                break
    else:
        while received < messages:
            if await pubsub.get_message(timeout=1.0) is not None:
                received += 1
    spent = time.process_time() - started
    await pubsub.aclose()
    await client.aclose()
    return spent / messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    args = parser.parse_args()
    for mode in ("listen", "get_message", "listen", "get_message"):
        seconds = asyncio.run(cpu_per_message(args.redis_url, args.messages, mode))
        print(f"{mode:12} {seconds * 1e6:6.1f} µs CPU per message")


if __name__ == "__main__":
    main()
