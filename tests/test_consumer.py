"""The consumer against the real broker: what it acks, what it dead-letters, and that it never loops."""

from __future__ import annotations

import asyncio
import logging

import aio_pika
import aiormq.exceptions
import orjson
import pytest

from broker.connection import Broker
from broker.headers import ERROR_HEADER, ERROR_TYPE_HEADER
from broker.messages import Order
from broker.settings import Settings
from consumers.delivery import Delivery, current_delivery
from consumers.received import Received
from consumers.subscription import Subscription
from tests.amqp import (
    consumers_are,
    delete_queues,
    depth_is,
    drain,
    operator_channel,
    publish_raw,
    queue_depth,
    wait_until,
)
from tests.consuming import consuming, order_message, start_consumer


async def test_invalid_bodies_are_dead_lettered_and_the_consumer_goes_on(settings: Settings, broker: Broker) -> None:
    garbage = [
        aio_pika.Message(b"\x00\xff random bytes", content_type="application/json"),
        aio_pika.Message(b'{"order_id": "x", "items": "not a list"}', content_type="application/json"),
        aio_pika.Message(orjson.dumps({"order_id": "x", "items": ["a"]}), content_type="text/plain"),
        aio_pika.Message(b'{"order_id": "x", "items": ["' + b"a" * (settings.max_body_bytes + 1) + b'"]}'),
        aio_pika.Message(b"[" * 10_000 + b"]" * 10_000, content_type="application/json"),
    ]
    await publish_raw(settings.queue, *garbage, order_message("good-1"))
    processed: list[str] = []
    done = asyncio.Event()

    async def record(order: Order) -> None:
        processed.append(order.order_id)
        done.set()

    async with consuming(broker, record, settings):
        async with asyncio.timeout(30):
            await done.wait()
        await wait_until(lambda: depth_is(settings.dead_letter_queue, len(garbage)), what="garbage in the DLQ")
    assert processed == ["good-1"]
    assert await queue_depth(settings.queue) == 0
    dead = await drain(settings.dead_letter_queue)
    assert sorted(m.body for m in dead) == sorted(m.body for m in garbage)
    assert {m.headers[ERROR_TYPE_HEADER] for m in dead} == {"InvalidMessage"}
    errors = sorted(str(m.headers[ERROR_HEADER]) for m in dead)
    assert any("content type 'text/plain'" in e for e in errors)
    assert any("exceeds" in e for e in errors)
    assert sum("not a valid order" in e for e in errors) == 3


async def test_a_failing_handler_does_not_lose_the_message(settings: Settings, broker: Broker) -> None:
    await publish_raw(settings.queue, order_message("boom"), order_message("fine"))
    processed: list[str] = []
    done = asyncio.Event()

    async def fail_on_boom(order: Order) -> None:
        if order.order_id == "boom":
            raise RuntimeError("handler bug")
        processed.append(order.order_id)
        done.set()

    async with consuming(broker, fail_on_boom, settings):
        async with asyncio.timeout(30):
            await done.wait()
        await wait_until(lambda: depth_is(settings.dead_letter_queue, 1), what="the failed order in the DLQ")
    assert processed == ["fine"]
    [dead] = await drain(settings.dead_letter_queue)
    assert dead.message_id == "boom"
    assert Order.model_validate_json(dead.body).order_id == "boom"


async def test_handler_sees_its_delivery(settings: Settings, broker: Broker) -> None:
    await publish_raw(settings.queue, order_message("vip-1", headers={"x-orderlane-priority": 0}, priority=10))
    seen: list[Delivery] = []
    done = asyncio.Event()

    async def remember(order: Order) -> None:
        seen.append(current_delivery())
        done.set()

    async with consuming(broker, remember, settings):
        async with asyncio.timeout(30):
            await done.wait()
    assert seen == [Delivery(order_id="vip-1", priority=0, attempt=1, redelivered=False)]


async def test_stop_waits_for_in_flight_handlers_and_acks_them(
    settings: Settings, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="consumers.runner")
    await publish_raw(settings.queue, *(order_message(f"slow-{n}") for n in range(5)))
    started = asyncio.Event()
    release = asyncio.Event()
    finished: list[str] = []

    async def slow(order: Order) -> None:
        started.set()
        await release.wait()
        finished.append(order.order_id)

    consumer = await start_consumer(broker, slow, settings)
    async with asyncio.timeout(30):
        await started.wait()
    stopping = asyncio.create_task(consumer.stop(grace_seconds=30))
    await wait_until(lambda: consumers_are(settings.queue, 0), what="the subscription cancelled")
    await wait_until(lambda: logged(caplog, "stopping: waiting up to"), what="stop() waiting for the handler")
    assert not stopping.done(), "stop() must wait for the handler in flight"
    release.set()
    await stopping
    assert finished == ["slow-0"]
    await broker.channel.close()  # anything unacked would go back to the queue now
    await wait_until(lambda: depth_is(settings.queue, 4), what="the four untouched orders back in the queue")


async def test_stop_cancels_handlers_past_the_grace_period_without_acking(settings: Settings, broker: Broker) -> None:
    await publish_raw(settings.queue, order_message("stuck"))
    started = asyncio.Event()

    async def stuck(order: Order) -> None:
        started.set()
        await asyncio.Event().wait()

    consumer = await start_consumer(broker, stuck, settings)
    async with asyncio.timeout(30):
        await started.wait()
    await consumer.stop(grace_seconds=0.2)
    assert consumer.in_flight == 0
    await broker.channel.close()
    await wait_until(lambda: depth_is(settings.queue, 1), what="the cancelled order back in the queue")
    assert await queue_depth(settings.dead_letter_queue) == 0


async def test_a_dead_letter_that_cannot_be_moved_is_kept_and_moved_later(
    settings: Settings, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """With the DLQ gone the republish is returned unroutable; the original must stay in the broker's hands."""
    await delete_queues(settings.dead_letter_queue)
    await publish_raw(settings.queue, aio_pika.Message(b"garbage", content_type="application/json"))

    async def never_called(order: Order) -> None:
        raise AssertionError("garbage reached the handler")

    async with consuming(broker, never_called, settings):
        await wait_until(lambda: consumers_are(settings.queue, 1), what="the consumer subscribed")
        await wait_until(lambda: logged(caplog, "could not move it to"), what="the first move failed")
        async with operator_channel() as channel:
            await channel.declare_queue(settings.dead_letter_queue, durable=True)
        await wait_until(lambda: depth_is(settings.dead_letter_queue, 1), what="the garbage in the new DLQ")
    assert await queue_depth(settings.queue) == 0


async def test_a_subscription_the_broker_cancels_comes_back(settings: Settings, broker: Broker) -> None:
    """Deleting the work queue makes the broker cancel the consumer; the consumer declares it again and
    subscribes anew, so orders published afterwards are processed without a restart."""
    processed: list[str] = []

    async def record(order: Order) -> None:
        processed.append(order.order_id)

    async with consuming(broker, record, settings):
        await wait_until(lambda: consumers_are(settings.queue, 1), what="the consumer subscribed")
        async with operator_channel() as channel:
            await channel.queue_delete(settings.queue)

        async def subscribed_again() -> bool:
            try:
                return await consumers_are(settings.queue, 1)
            except aiormq.exceptions.ChannelNotFoundEntity:  # not declared again yet
                return False

        await wait_until(subscribed_again, what="the queue declared again and subscribed")
        await publish_raw(settings.queue, order_message("after-delete"))

        async def handled() -> bool:
            return processed == ["after-delete"]

        await wait_until(handled, what="the order published after the delete processed")


async def test_a_delivery_that_cannot_be_taken_is_logged_and_the_subscription_takes_the_next(
    settings: Settings, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """The subscription takes each delivery inside aiormq's channel reader: an error there (a bug) must not close the
    channel, which would stop every delivery after it."""
    taken: list[str] = []
    failed: list[Received] = []

    def deliver(received: Received) -> None:
        if not failed:
            failed.append(received)
            raise RuntimeError("a bug while taking the first delivery")
        taken.append(Order.model_validate_json(received.body).order_id)
        received.ack()

    lane = broker.topology.lane_for(5)
    subscription = Subscription(settings, lane, depth=10, deliver=deliver)
    await subscription.start()
    try:
        await publish_raw(lane.work.name, order_message("first"), order_message("second"))
        await wait_until(lambda: taken == ["second"], what="the delivery after the failed one taken")
    finally:
        await subscription.stop()
        await subscription.close()
    assert logged(caplog, f"could not take a delivery from {lane.work.name!r}")
    assert await queue_depth(lane.work.name) == 1, "the first, never settled, is back in the queue"


def logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in record.getMessage() for record in caplog.records)
