"""Broker-side helpers for tests: look at queues the way an operator would, on a connection of their own."""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from broker.settings import Settings
from broker.topology import build_topology

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


def amqp_url() -> str:
    return os.environ.get("ORDERLANE_AMQP_URL", DEFAULT_AMQP_URL)


@asynccontextmanager
async def operator_channel() -> AsyncIterator[AbstractChannel]:
    """A plain (not robust) connection and confirm channel on which an unroutable publish raises."""
    connection = await aio_pika.connect(amqp_url())
    async with connection:
        yield await connection.channel(on_return_raises=True)


async def queue_depth(name: str) -> int:
    """Ready messages in `name` (a passive declare, as the management UI would show)."""
    async with operator_channel() as channel:
        queue = await channel.declare_queue(name, passive=True)
        count = queue.declaration_result.message_count
        assert count is not None
        return count


async def depth_is(queue: str, count: int) -> bool:
    return await queue_depth(queue) == count


async def consumers_are(queue: str, count: int) -> bool:
    """Whether `queue` has `count` subscribed consumers."""
    async with operator_channel() as channel:
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.consumer_count == count


async def drain(name: str) -> list[AbstractIncomingMessage]:
    """Take every ready message out of `name` with basic.get, acking each."""
    messages = []
    async with operator_channel() as channel:
        queue = await channel.declare_queue(name, passive=True)
        while (message := await queue.get(fail=False)) is not None:
            await message.ack()
            messages.append(message)
    return messages


async def delete_queues(*names: str) -> None:
    async with operator_channel() as channel:
        for name in names:
            await channel.queue_delete(name)


async def delete_topology(settings: Settings) -> None:
    """Delete every queue orderlane declares for `settings`: work, dead-letter and retry queues."""
    await delete_queues(*(spec.name for spec in build_topology(settings).queues))


async def wait_until(predicate: Callable[[], Awaitable[bool] | bool], *, within: float = 30.0, what: str) -> None:
    """Poll a condition (a queue depth at the broker, a consumer's count) until it holds; fail with `what` after
    `within` seconds."""

    async def holds() -> bool:
        result = predicate()
        return await result if inspect.isawaitable(result) else result

    try:
        async with asyncio.timeout(within):
            while not await holds():  # noqa: ASYNC110 - the broker has no event for "depth reached N"
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {within:g}s: {what}") from None


def lane_queue(settings: Settings, priority: int) -> str:
    """The work queue an order of effective `priority` goes to (with the default lanes, 0..2 to `<queue>.high`)."""
    return build_topology(settings).lane_for(priority).work.name


async def work_depth(settings: Settings) -> int:
    """Ready messages in every lane's work queue together."""
    return sum([await queue_depth(lane.work.name) for lane in build_topology(settings).lanes])


async def drained(settings: Settings) -> bool:
    """Whether every lane's work queue is empty."""
    return await work_depth(settings) == 0


async def publish_raw(queue: str, *messages: aio_pika.Message) -> None:
    """Publish straight to a queue, bypassing the API: how garbage reaches a consumer."""
    async with operator_channel() as channel:
        for message in messages:
            await channel.default_exchange.publish(message, routing_key=queue)
