"""Quorum queues on the machine's RabbitMQ 3.10 (one node): declared, retried through quorum delay queues,
dead-lettered; a message whose consumer keeps dying ends in the dead-letter queue; a VIP still overtakes the backlog
through its lane although the queues have no priorities. The cluster's side is tests/test_cluster.py."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import aio_pika
import pytest

from broker.connection import open_broker
from broker.errors import ConfigurationError, PermanentFailure
from broker.headers import ATTEMPTS_HEADER, ERROR_TYPE_HEADER
from broker.messages import Order
from broker.publisher import OrderPublisher
from broker.settings import Settings
from broker.topology import build_topology, check_queue_type
from consumers.delivery import current_delivery
from tests.amqp import amqp_url, depth_is, drain, publish_raw, wait_until
from tests.consuming import consuming, order_message


@pytest.fixture
def quorum(settings: Settings) -> Settings:
    return settings.model_copy(update={"queue_type": "quorum", "max_attempts": 3})


def test_quorum_arguments_dead_letter_at_least_once_and_limit_deliveries() -> None:
    settings = Settings(queue="q", queue_type="quorum", delivery_limit=7)
    topology = build_topology(settings, "3.10.8")
    work = topology.lanes[-1].work.arguments
    assert work["x-delivery-limit"] == 7
    assert (work["x-dead-letter-strategy"], work["x-overflow"]) == ("at-least-once", "reject-publish")
    assert "x-max-priority" not in work
    retry = topology.lanes[-1].retries[0].arguments
    assert (retry["x-dead-letter-routing-key"], retry["x-dead-letter-strategy"]) == ("q", "at-least-once")
    before_at_least_once = build_topology(settings, "3.9.29").lanes[-1].work.arguments
    assert "x-dead-letter-strategy" not in before_at_least_once and before_at_least_once["x-delivery-limit"] == 7
    assert "x-delivery-limit" not in build_topology(Settings(queue="q")).lanes[-1].work.arguments


def test_the_dead_letter_queue_keeps_letters_however_often_an_operator_reads_them() -> None:
    """From 4.0 a quorum queue drops a message returned 20 times (its default delivery limit); `dlq list` returns
    every letter it reads, so the dead-letter queue has no limit there. 3.x has no default limit to lift."""
    settings = Settings(queue="q", queue_type="quorum")
    assert build_topology(settings, "4.0.5").dead_letter.arguments["x-delivery-limit"] == -1
    assert "x-delivery-limit" not in build_topology(settings, "3.10.8").dead_letter.arguments
    assert "x-delivery-limit" not in build_topology(Settings(queue="q"), "4.0.5").dead_letter.arguments


def test_quorum_needs_rabbitmq_3_8_and_one_lane_says_it_has_no_priorities(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigurationError, match=r"3\.8 or later.*3\.7\.28"):
        check_queue_type(Settings(queue_type="quorum"), "3.7.28")
    with caplog.at_level(logging.WARNING, logger="broker.topology"):
        check_queue_type(Settings(queue_type="quorum"), "3.10.8")  # lanes: priority classes
        check_queue_type(Settings(queue_type="quorum", lanes=()), "4.0.5")  # quorum priorities of its own
        assert not caplog.records
        check_queue_type(Settings(queue_type="quorum", lanes=()), "3.10.8")
    [line] = caplog.records
    assert "have no priorities and ORDERLANE_LANES sets one lane" in line.getMessage()


async def test_quorum_queues_retry_through_delay_queues_and_dead_letter(quorum: Settings) -> None:
    """Every queue is a quorum queue (a classic declaration of the same name is refused); an order that fails twice
    comes back through the quorum delay queues and is processed at its third attempt; a poison order and a permanent
    failure end in the quorum dead-letter queue."""
    attempts: Counter[str] = Counter()
    done = asyncio.Event()

    async def handler(order: Order) -> None:
        attempts[order.order_id] += 1
        if order.order_id == "permanent":
            raise PermanentFailure("no such address")
        if order.order_id == "poison" or (order.order_id == "flaky" and current_delivery().attempt < 3):
            raise ValueError("not yet")
        done.set()

    async with open_broker(quorum) as broker:
        await _refuses_a_classic_declaration(quorum)
        await publish_raw(quorum.queue, *(order_message(order_id) for order_id in ("flaky", "poison", "permanent")))
        async with consuming(broker, handler, quorum):
            async with asyncio.timeout(30):
                await done.wait()
            await wait_until(lambda: depth_is(quorum.dead_letter_queue, 2), what="poison and permanent dead-lettered")
    assert attempts == {"flaky": 3, "poison": 3, "permanent": 1}
    dead = {message.message_id: message.headers for message in await drain(quorum.dead_letter_queue)}
    assert (dead["poison"][ERROR_TYPE_HEADER], dead["poison"][ATTEMPTS_HEADER]) == ("ValueError", 3)
    assert dead["permanent"][ERROR_TYPE_HEADER] == "PermanentFailure"


async def _refuses_a_classic_declaration(settings: Settings) -> None:
    """The same arguments but `x-queue-type: classic`: the broker names the queue type as what differs."""
    for spec in build_topology(settings).queues:
        connection = await aio_pika.connect(amqp_url())
        async with connection:
            channel = await connection.channel()
            classic = {**spec.arguments, "x-queue-type": "classic"}
            with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed, match="x-queue-type"):
                await channel.declare_queue(spec.name, durable=True, arguments=classic)


async def test_a_message_whose_consumer_keeps_dying_ends_in_the_dead_letter_queue(quorum: Settings) -> None:
    """x-delivery-limit: a consumer that takes the order and dies before settling it (its connection gone) gets it
    again, up to the limit; then the broker dead-letters it, at least once, rather than loop forever."""
    quorum = quorum.model_copy(update={"delivery_limit": 2})
    async with open_broker(quorum):
        await publish_raw(quorum.queue, order_message("crashes-its-consumer"))
        deliveries = 0
        while not await depth_is(quorum.dead_letter_queue, 1):
            connection = await aio_pika.connect(amqp_url())
            async with connection:  # closed with the message unacked: as a consumer that died
                queue = await (await connection.channel()).declare_queue(quorum.queue, passive=True)
                if await queue.get(fail=False) is not None:
                    deliveries += 1
            assert deliveries <= quorum.delivery_limit + 1, "still delivered past the delivery limit"
    assert deliveries == quorum.delivery_limit + 1
    [dead] = await drain(quorum.dead_letter_queue)
    assert dead.message_id == "crashes-its-consumer"
    deaths = dead.headers["x-death"]
    assert isinstance(deaths, list) and isinstance(deaths[0], dict)
    assert deaths[0]["reason"] == "delivery_limit"


async def test_without_broker_priorities_a_vip_overtakes_the_backlog_through_its_lane(quorum: Settings) -> None:
    """Quorum queues on 3.x ignore a message's priority: the VIP published after 100 regular orders is still among
    the first two handled, because its lane's queue is consumed beside the backlog's."""
    handled: list[str] = []
    enough = asyncio.Event()

    async def handler(order: Order) -> None:
        handled.append(order.order_id)
        if len(handled) >= 5:
            enough.set()

    async with open_broker(quorum) as broker:
        publisher = OrderPublisher(broker, quorum)
        await asyncio.gather(*(publisher.publish(Order(order_id=f"r-{n}", items=["a"])) for n in range(100)))
        await publisher.publish(Order(order_id="vip", items=["a"], user_type="vip"))
        async with consuming(broker, handler, quorum):
            async with asyncio.timeout(30):
                await enough.wait()
    assert "vip" in handled[:2], f"the VIP came after {handled[:2]}"
