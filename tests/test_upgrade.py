"""Upgrading a one-queue deployment to the default lanes: the regular lane is the queue it had, so its backlog is
consumed where it waits, and nothing has to be moved."""

from __future__ import annotations

import pytest
from aiormq.exceptions import ChannelPreconditionFailed

from broker.connection import open_broker
from broker.messages import Order
from broker.publisher import OrderPublisher
from broker.settings import Settings
from tests.amqp import drained, lane_queue, operator_channel, queue_depth, wait_until
from tests.consuming import consuming

BACKLOG = [9, 0, 5, 2, 7, 3]
"""The old deployment's waiting orders, by priority: urgent ones among them, in the one queue."""


async def test_the_old_queues_backlog_is_consumed_after_the_upgrade(settings: Settings) -> None:
    one_queue = settings.model_copy(update={"lanes": ()})
    async with open_broker(one_queue) as old:
        publisher = OrderPublisher(old, one_queue)
        for n, priority in enumerate(BACKLOG):
            await publisher.publish(Order(order_id=f"old-{n}", priority=priority, items=["a"]))
    assert await queue_depth(settings.queue) == len(BACKLOG)

    processed: list[str] = []

    async def record(order: Order) -> None:
        processed.append(order.order_id)

    async with open_broker(settings) as new:  # the same queue declared again, with the high lane beside it
        # it had ORDERLANE_MAX_PRIORITY's levels, 0-10, and keeps them: the regular lane alone would need 0-6
        assert new.topology.lanes[-1].work.arguments["x-max-priority"] == 10
        receipt = await OrderPublisher(new, settings).publish(Order(order_id="new-vip", items=["a"], user_type="vip"))
        assert receipt.queue == lane_queue(settings, 0) == f"{settings.queue}.high"
        async with consuming(new, record, settings):
            await wait_until(lambda: len(processed) == len(BACKLOG) + 1, what="the old backlog and the new VIP order")
    assert sorted(processed) == sorted([f"old-{n}" for n in range(len(BACKLOG))] + ["new-vip"])
    assert await drained(settings)


async def test_lanes_empty_gives_the_one_queue_back(settings: Settings) -> None:
    one_queue = settings.model_copy(update={"lanes": ()})
    async with open_broker(one_queue) as broker:
        receipt = await OrderPublisher(broker, one_queue).publish(Order(order_id="vip", items=["a"], user_type="vip"))
    assert receipt.queue == settings.queue
    assert await queue_depth(settings.queue) == 1


async def test_a_new_regular_lane_has_only_the_levels_its_orders_use(settings: Settings) -> None:
    async with open_broker(settings) as broker:
        high, regular = broker.topology.lanes
        assert (high.work.arguments["x-max-priority"], regular.work.arguments["x-max-priority"]) == (10, 6)
    old_levels = {**regular.work.arguments, "x-max-priority": 10}
    async with operator_channel() as channel:  # the broker holds it so: the old 10 levels are refused
        with pytest.raises(ChannelPreconditionFailed, match=r"current is (the value )?'6'"):
            await channel.declare_queue(settings.queue, durable=True, arguments=old_levels)
