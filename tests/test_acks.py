"""Batched settling: which frames a turn's decisions become (pure), and on the real broker that a `multiple` ack
never covers a delivery still being handled."""

from __future__ import annotations

import asyncio

from broker.connection import Broker
from broker.messages import Order
from broker.settings import Settings
from consumers.acks import Settlement, take_frames
from consumers.runner import Consumer
from tests.amqp import depth_is, publish_raw, wait_until
from tests.consuming import order_message


def test_a_run_of_acks_from_the_oldest_becomes_one_multiple_ack_and_the_rest_go_singly() -> None:
    unsettled: dict[int, Settlement | None] = dict.fromkeys(range(1, 9))
    decided = {
        1: Settlement.ACK,
        2: Settlement.ACK,
        3: Settlement.REQUEUE,
        4: Settlement.ACK,
        6: Settlement.ACK,
        8: Settlement.REQUEUE,
    }
    unsettled.update(decided)
    assert take_frames(unsettled) == [
        (2, Settlement.ACK, True),
        (3, Settlement.REQUEUE, False),
        (4, Settlement.ACK, True),
        (6, Settlement.ACK, False),  # 5 is still being handled: a multiple ack of 6 would ack 5 too
        (8, Settlement.REQUEUE, False),
    ]
    assert unsettled == {5: None, 7: None}, "what was sent is forgotten; 5 and 7 wait"
    unsettled.update({5: Settlement.ACK, 7: Settlement.ACK})
    assert take_frames(unsettled) == [(7, Settlement.ACK, True)]


async def test_a_delivery_still_running_is_not_acked_by_its_neighbours(settings: Settings, broker: Broker) -> None:
    await publish_raw(settings.queue, *(order_message(f"o-{n}") for n in range(10)))
    finished: list[str] = []
    first_started = asyncio.Event()

    async def first_never_ends(order: Order) -> None:
        if order.order_id == "o-0":
            first_started.set()
            await asyncio.Event().wait()
        finished.append(order.order_id)

    consumer = Consumer(broker, first_never_ends, settings, prefetch=10, concurrency=4)
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            await first_started.wait()
        await wait_until(lambda: len(finished) == 9, what="the nine others handled")
    finally:  # the stop sends the acks decided before it closes the channel
        await consumer.stop(grace_seconds=0)
    await wait_until(lambda: depth_is(settings.queue, 1), what="o-0, never acked, back in the queue")
