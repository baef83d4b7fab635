"""End to end on the real broker: orders posted while no consumer runs come out by effective priority."""

from __future__ import annotations

import asyncio
import random

from api.app import create_app
from bench.priority import System, measure_priority, orderlane_consumer
from broker.connection import open_broker
from broker.messages import Order
from broker.publisher import OrderPublisher
from broker.settings import Settings
from tests.amqp import queue_depth
from tests.consuming import consuming
from tests.http import app_client

ORDER_COUNT = 200


def mixed_orders(count: int) -> list[Order]:
    rng = random.Random(20261128)
    return [
        Order(
            order_id=f"o-{n:04d}",
            priority=rng.randint(0, 9),
            items=[f"item-{n}"],
            user_type="vip" if rng.random() < 0.1 else "regular",
        )
        for n in range(count)
    ]


async def test_consumer_processes_by_effective_priority_fifo_within_a_level_exactly_once(settings: Settings) -> None:
    """On one queue (`ORDERLANE_LANES=`) with prefetch 1, the broker alone decides the order: strictly by priority.
    (With lanes, the consumer's dispatcher orders what the lanes' windows hold: tests/test_dispatcher.py.)"""
    settings = settings.model_copy(update={"lanes": ()})
    orders = mixed_orders(ORDER_COUNT)
    assert {o.user_type for o in orders} == {"vip", "regular"}
    async with (
        open_broker(settings) as broker,
        app_client(create_app(settings, publisher=OrderPublisher(broker, settings))) as client,
    ):
        for order in orders:  # one at a time, so "FIFO within a level" means this order
            response = await client.post(
                "/orders", content=order.model_dump_json(), headers={"content-type": "application/json"}
            )
            assert response.status_code == 202
    assert await queue_depth(settings.queue) == ORDER_COUNT

    processed: list[str] = []
    all_done = asyncio.Event()

    async def record(order: Order) -> None:
        processed.append(order.order_id)
        if len(processed) == ORDER_COUNT:
            all_done.set()

    async with open_broker(settings) as consumer_broker, consuming(consumer_broker, record, settings):
        async with asyncio.timeout(60):
            await all_done.wait()

    assert settings.vip_priority == 0
    by_priority = sorted(orders, key=lambda o: 0 if o.user_type == "vip" else o.priority)  # stable: FIFO per level
    assert processed == [o.order_id for o in by_priority]
    assert await queue_depth(settings.queue) == 0  # every one acked


async def test_lanes_share_the_slots_and_an_urgent_order_takes_the_next_free_one() -> None:
    """The default lane keeps its 4 slots busy with slow handlers and 8 more held; a VIP order comes through the high
    lane's own window, so it waits for no ack, and then for no held regular order: at most the 4 whose slots came
    free while it was on its way from the broker (the slots start together, so they come free together), never the
    8 held (which a VIP without the local priority queue would wait behind)."""
    lanes = System(
        "orderlane lanes", orderlane_consumer, {"lanes": "high:0-2,default:3-9", "prefetch": 12, "concurrency": 4}
    )
    result = await measure_priority(lanes, handler_ms=200, backlog=120, vips=3, vip_interval=0.1, warmup=0.3)
    assert result.conclusive
    assert result.overtaken_max <= 4, "only regular orders whose slot came free while the VIP was on its way"
