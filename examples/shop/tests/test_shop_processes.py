"""The shop as it runs: `python -m api` and `python -m consumers` as processes, named the shop's model and handler by
the environment alone, on the real broker, Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import aio_pika
import httpx
import pytest
from redis.asyncio import Redis
from shopkit import ShopDatabase, free_port, order_body, shop_order

from broker import Settings
from broker.messages import CONTENT_TYPE, encode_order
from broker.topology import build_topology

ALREADY_RECORDED = "order already recorded"


def shop_environment(settings: Settings, database: ShopDatabase) -> dict[str, str]:
    """What a deployment of the shop sets (examples/shop/Dockerfile and compose.yaml), on this test's queue and
    schema."""
    inherited = {key: value for key, value in os.environ.items() if not key.startswith(("ORDERLANE_", "SHOP_"))}
    return inherited | {
        "ORDERLANE_AMQP_URL": str(settings.amqp_url),
        "ORDERLANE_QUEUE": settings.queue,
        "ORDERLANE_STATUS_URL": str(settings.status_url or ""),
        "ORDERLANE_STARTUP_TIMEOUT": str(settings.startup_timeout),
        "ORDERLANE_ORDER_MODEL": "shop.models:ShopOrder",
        "ORDERLANE_HANDLER": "shop.handler:handle",
        "SHOP_DATABASE_URL": database.url,
    }


async def start(module: str, *args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )


async def eventually(condition: Callable[[], Awaitable[bool]], what: str, within: float = 30) -> None:
    """Ask until `condition` holds (an HTTP answer has no event to wait for); fail naming `what`."""
    try:
        async with asyncio.timeout(within):
            while not await condition():  # noqa: ASYNC110 - polled: a process answers only when asked
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"not within {within:g}s: {what}")


async def lines_until(
    process: asyncio.subprocess.Process, marker: str, count: int, seen: list[str], within: float = 30
) -> None:
    """Read the process's log into `seen` until `marker` has appeared `count` times in it."""
    assert process.stderr is not None
    try:
        async with asyncio.timeout(within):
            while sum(marker in line for line in seen) < count:
                line = await process.stderr.readline()
                if not line:
                    pytest.fail(f"the process ended before {count}x {marker!r}")
                seen.append(line.decode())
    except TimeoutError:
        pytest.fail(f"not within {within:g}s: {count}x {marker!r}")


@pytest.fixture
async def shop_queues(settings: Settings) -> AsyncIterator[Settings]:
    """The settings, with every queue orderlane declares for them and the statuses kept for them deleted
    afterwards."""
    yield settings
    connection = await aio_pika.connect(str(settings.amqp_url))
    async with connection:
        channel = await connection.channel()
        for queue in build_topology(settings).queues:
            await channel.queue_delete(queue.name)
    if settings.status_url is not None:
        async with Redis.from_url(str(settings.status_url)) as redis:
            async for key in redis.scan_iter(match=f"orderlane:{settings.queue}:*"):
                await redis.unlink(key)


async def publish_twice(settings: Settings, body: bytes) -> None:
    """The same message twice, straight into the work queue: what a redelivery looks like to the handler."""
    connection = await aio_pika.connect(str(settings.amqp_url))
    async with connection:
        channel = await connection.channel()
        for _ in range(2):
            message = aio_pika.Message(body, content_type=CONTENT_TYPE, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await channel.default_exchange.publish(message, routing_key=settings.queue)


async def test_the_shop_records_a_posted_order_once_through_the_real_processes(
    shop_queues: Settings, database: ShopDatabase
) -> None:
    settings = shop_queues
    env = shop_environment(settings, database)
    port = free_port()
    consumer = await start("consumers", env=env)
    api = await start("api", "--port", str(port), env=env)
    api_log = asyncio.create_task(api.stderr.read()) if api.stderr else None  # drained, so it never blocks
    consumer_log: list[str] = []
    order_id = "shop-e2e-1"
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

            async def ready() -> bool:
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            async def processed() -> bool:
                return bool((await client.get(f"/orders/{order_id}")).json().get("state") == "processed")

            await eventually(ready, "the API ready")
            posted = await client.post("/orders", json=order_body(order_id))
            assert posted.status_code == 202, posted.text
            assert posted.json()["priority"] == 0, "a VIP order is boosted"
            await eventually(processed, "the order's status `processed`")
            assert await database.count("orders", order_id) == 1
            assert await database.count("order_lines", order_id) == 2

            await publish_twice(settings, encode_order(shop_order(order_id)))
            await lines_until(consumer, ALREADY_RECORDED, 2, consumer_log)
            assert sum(f"order_id={order_id}" in line for line in consumer_log if ALREADY_RECORDED in line) == 2
            assert sum("order recorded:" in line for line in consumer_log) == 1
            assert await database.count("orders", order_id) == 1
            assert await database.count("order_lines", order_id) == 2
    finally:
        for process in (api, consumer):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert consumer.stderr is not None
            consumer_log.append((await consumer.stderr.read()).decode())
            codes = (await api.wait(), await consumer.wait())
            api_output = (await api_log).decode() if api_log is not None else ""
        print("consumer:", *consumer_log, "api:", api_output, sep="\n")  # shown by pytest when the test fails
    assert codes == (0, 0)
