"""The consumer on the real broker with a prefetch deeper than its concurrency: what it holds, it reorders by
priority; it never runs more handlers than its slots; on stop it gives back what it holds, at once, unacked."""

from __future__ import annotations

import asyncio
import logging

import pytest

from broker.connection import Broker
from broker.messages import Order
from broker.settings import Settings
from consumers.runner import Consumer
from tests.amqp import depth_is, publish_raw, queue_depth, wait_until
from tests.consuming import order_message

VIP_BROKER_PRIORITY = 10
REGULAR_BROKER_PRIORITY = 4


class HeldOpen:
    """A handler that notes each order it starts and runs until the gate opens."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gate = asyncio.Event()

    async def __call__(self, order: Order) -> None:
        self.started.append(order.order_id)
        await self.gate.wait()


async def backlog(settings: Settings, count: int) -> None:
    await publish_raw(
        settings.queue, *(order_message(f"r-{n:02d}", priority=REGULAR_BROKER_PRIORITY) for n in range(count))
    )


async def test_the_most_urgent_held_delivery_starts_next(settings: Settings, broker: Broker) -> None:
    await backlog(settings, 20)
    one_at_a_time = HeldOpen()
    started, gate = one_at_a_time.started, one_at_a_time.gate
    no_vip_slot = settings.model_copy(update={"vip_slots": 0})  # the local order alone
    consumer = Consumer(broker, one_at_a_time, no_vip_slot, prefetch=30, concurrency=1)
    await consumer.start()
    try:
        await wait_until(lambda: consumer.held == 19, what="the backlog held behind the one running")
        await publish_raw(settings.queue, order_message("vip", priority=VIP_BROKER_PRIORITY))
        await wait_until(lambda: consumer.held == 20, what="the VIP delivered behind the held backlog")
        gate.set()
        await wait_until(lambda: len(started) == 21, what="everything started")
    finally:
        gate.set()
        await consumer.stop(grace_seconds=5)
    assert started[:2] == ["r-00", "vip"], "the VIP goes before the 19 regular orders held before it came"
    assert started[2:] == [f"r-{n:02d}" for n in range(1, 20)], "first in, first out within a priority"


async def test_a_vip_starts_on_its_own_slot_while_the_only_other_one_is_busy(
    settings: Settings, broker: Broker
) -> None:
    """ORDERLANE_VIP_SLOTS (1 by default): the VIP does not wait for the regular order running, and the slot kept
    for it takes no regular order, however many wait."""
    await backlog(settings, 5)
    held_open = HeldOpen()
    started, gate = held_open.started, held_open.gate
    consumer = Consumer(broker, held_open, settings, prefetch=30, concurrency=1)
    await consumer.start()
    try:
        await wait_until(lambda: consumer.held == 4, what="the backlog held behind the one running")
        assert started == ["r-00"], "the VIP slot takes no regular order"
        await publish_raw(settings.queue, order_message("vip", priority=VIP_BROKER_PRIORITY))
        await wait_until(lambda: started == ["r-00", "vip"], what="the VIP started while r-00 still runs")
    finally:
        gate.set()
        await consumer.stop(grace_seconds=5)


async def test_never_more_handlers_at_once_than_the_concurrency(settings: Settings, broker: Broker) -> None:
    await publish_raw(settings.queue, *(order_message(f"c-{n}") for n in range(200)))
    running = most_running = handled = 0
    done = asyncio.Event()

    async def counts(order: Order) -> None:
        nonlocal running, most_running, handled
        running += 1
        most_running = max(most_running, running)
        await asyncio.sleep(0.002)
        running -= 1
        handled += 1
        if handled == 200:
            done.set()

    consumer = Consumer(broker, counts, settings, prefetch=50, concurrency=3)
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            await done.wait()
    finally:
        await consumer.stop(grace_seconds=5)
    assert most_running == 3


async def test_stop_gives_back_held_deliveries_at_once_and_loses_none(
    settings: Settings, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="consumers.runner")
    total = 30
    await publish_raw(settings.queue, *(order_message(f"s-{n:02d}") for n in range(total)))
    finished: list[str] = []
    started = asyncio.Event()
    gate = asyncio.Event()

    async def slow(order: Order) -> None:
        started.set()
        await gate.wait()
        finished.append(order.order_id)

    consumer = Consumer(broker, slow, settings, prefetch=20, concurrency=1)
    await consumer.start()
    async with asyncio.timeout(30):
        await started.wait()
    await wait_until(lambda: consumer.held == 19, what="19 held behind the one running")
    stopping = asyncio.create_task(consumer.stop(grace_seconds=30))
    # the held ones are back in the queue while the running handler has not finished
    await wait_until(lambda: depth_is(settings.queue, total - 1), what="the held deliveries back in the queue")
    assert not stopping.done()
    assert consumer.held == 0
    gate.set()
    await stopping
    assert finished == ["s-00"]
    assert "gave 19 held orders back to the broker" in caplog.text
    assert await queue_depth(settings.queue) == total - 1, "nothing lost, nothing acked but the one handled"
