"""What the scenarios share: a broker connection of their own, queues to fill and drain, timing, and the clean-up
of the queues and of the status records made under their name."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import aio_pika
import httpx
from aio_pika.abc import AbstractChannel, AbstractQueue
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from broker.messages import Order
from broker.priority import prioritize
from broker.publisher import build_message
from broker.settings import Settings
from broker.topology import Topology, build_topology

PUBLISH_WINDOW = 256
"""Publishes awaited concurrently when filling a queue: confirms are pipelined, a lone awaited one is slow."""


def bench_settings(**overrides: object) -> Settings:
    """Settings on a queue of the benchmark's own; everything else from the environment."""
    return Settings(queue=f"bench-{uuid.uuid4().hex[:8]}", **overrides)  # type: ignore[arg-type]


def environment(settings: Settings) -> dict[str, str]:
    """The environment of an orderlane process started by a scenario: on the settings' queue and status store."""
    return {**os.environ, "ORDERLANE_QUEUE": settings.queue, "ORDERLANE_STATUS_URL": str(settings.status_url or "")}


def order(number: int, *, priority: int = 5, user_type: str = "regular", prefix: str = "b") -> Order:
    return Order(order_id=f"{prefix}-{number:07d}", priority=priority, items=["widget"], user_type=user_type)  # type: ignore[arg-type]


def orders(count: int, *, priority: int = 5, user_type: str = "regular", prefix: str = "b") -> list[Order]:
    return [order(n, priority=priority, user_type=user_type, prefix=prefix) for n in range(count)]


@asynccontextmanager
async def bench_channel(settings: Settings) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(str(settings.amqp_url))
    async with connection:
        yield await connection.channel(on_return_raises=True)


@asynccontextmanager
async def raw_queue(settings: Settings) -> AsyncIterator[AbstractQueue]:
    """The work queue on a plain aio-pika connection of its own, at the settings' prefetch: the baseline."""
    assert isinstance(settings.prefetch, int), "raw aio-pika has no automatic prefetch"
    connection = await aio_pika.connect(str(settings.amqp_url))
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=settings.prefetch)
        yield await channel.get_queue(settings.queue)


def addressed(settings: Settings, topology: Topology, order: Order) -> tuple[aio_pika.Message, str]:
    """The message the API would publish for `order`, and the work queue of its lane."""
    priority = prioritize(order, vip_priority=settings.vip_priority, max_priority=settings.max_priority)
    return build_message(order, priority), topology.lane_for(priority.effective).work.name


Address = Callable[[Settings, Topology, Order], tuple[aio_pika.Message, str]]
"""The message a consumer understands for an order, and the queue it goes to."""


async def fill(settings: Settings, backlog: list[Order], address: Address = addressed) -> None:
    """Publish `backlog` as `address` says (by default as the API would: same messages, persistent), confirmed,
    PUBLISH_WINDOW at a time."""
    topology = build_topology(settings)
    async with bench_channel(settings) as channel:
        for start in range(0, len(backlog), PUBLISH_WINDOW):
            batch = [address(settings, topology, order) for order in backlog[start : start + PUBLISH_WINDOW]]
            await asyncio.gather(
                *(channel.default_exchange.publish(message, routing_key=queue) for message, queue in batch)
            )


async def delete_queues(settings: Settings) -> None:
    """The benchmark's queues, and the status records kept under their name (the store's namespace)."""
    async with bench_channel(settings) as channel:
        for spec in build_topology(settings).queues:
            await channel.queue_delete(spec.name)
    try:
        await status_records(settings, delete=True)
    except RedisConnectionError:  # no Redis at all: the API and the consumers wrote nothing either
        pass


async def status_records(settings: Settings, *, delete: bool = False) -> int:
    """How many order records are kept under the settings' queue (none with the store off); with `delete`, they
    are deleted too, with the rest of the deployment's keys (its departure counter)."""
    if settings.status_url is None:
        return 0
    namespace = f"orderlane:{settings.queue}:"
    async with Redis.from_url(str(settings.status_url)) as client:
        keys = [key async for key in client.scan_iter(match=f"{namespace}*", count=1000)]
        if delete:
            for start in range(0, len(keys), 1000):
                await client.unlink(*keys[start : start + 1000])
    return sum(key.startswith(f"{namespace}order:".encode()) for key in keys)


async def metric_totals(client: httpx.AsyncClient, port: int, names: Sequence[str]) -> dict[str, float]:
    """The samples called `names` that a process serves on `port`, each summed over its labels (0 if absent)."""
    totals = dict.fromkeys(names, 0.0)
    text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals


async def timed(run: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    await run()
    return time.perf_counter() - started
