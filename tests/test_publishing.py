"""Publishing against the real broker: what lands on the wire, and that 202 means the broker has it."""

from __future__ import annotations

import time
from typing import Any

import aio_pika
import pytest

from api.app import create_app
from broker.connection import Broker
from broker.errors import PublishError
from broker.headers import PRIORITY_HEADER, published_at_of
from broker.messages import Order, encode_order
from broker.priority import Priority
from broker.publisher import OrderPublisher, message_properties, publish_confirmed
from broker.queues import queue_stats
from broker.settings import Settings
from tests.amqp import delete_queues, drain, operator_channel, queue_depth
from tests.http import app_client

ORDER: dict[str, Any] = {"order_id": "wire-1", "priority": 6, "items": ["tea", "cup"], "user_type": None}


async def test_202_means_a_persistent_confirmed_message_with_its_priority(settings: Settings) -> None:
    async with app_client(create_app(settings)) as client:  # the lifespan owns the connection here
        response = await client.post("/orders", json=ORDER)
    assert response.status_code == 202
    assert response.json()["broker_priority"] == 3
    [message] = await drain(settings.queue)
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.content_type == "application/json"
    assert message.message_id == "wire-1"
    assert message.priority == 3
    assert message.timestamp is not None
    assert message.headers[PRIORITY_HEADER] == 6
    assert Order.model_validate_json(message.body) == Order.model_validate({**ORDER, "user_type": "regular"})


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b'{"order_id": "x", "items": []}', "application/json", 422),
        (b'{"order_id": "x", "items": ["a"], "colour": "red"}', "application/json", 422),
        (b"{not json", "application/json", 400),
        (b"", "application/json", 400),
        (b'{"order_id": "x", "items": ["a"]}', "text/plain", 415),
        (b'{"order_id": "x", "items": ["a"]}', None, 415),
        (b'{"order_id": "x", "items": ["' + b"a" * 70_000 + b'"]}', "application/json", 413),
    ],
)
async def test_bad_input_gets_its_status_and_leaves_the_queue_untouched(
    settings: Settings, broker: Broker, content: bytes, content_type: str | None, status: int
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    async with app_client(create_app(settings, publisher=OrderPublisher(broker, settings))) as client:
        response = await client.post("/orders", content=content, headers=headers)
    assert response.status_code == status
    assert await queue_depth(settings.queue) == 0


async def test_unroutable_order_is_503_not_202(settings: Settings, broker: Broker) -> None:
    """The mandatory flag: with the queue gone the broker returns the message, and that is an error."""
    async with app_client(create_app(settings, publisher=OrderPublisher(broker, settings))) as client:
        await delete_queues(settings.queue)
        response = await client.post("/orders", json=ORDER)
    assert response.status_code == 503
    assert "retry-after" in response.headers


async def test_nacked_order_raises_publish_error(settings: Settings, broker: Broker) -> None:
    """A queue that refuses publishes (full, overflow reject-publish) makes the broker nack: no receipt."""
    full = f"{settings.queue}.full"
    async with operator_channel() as channel:
        await channel.declare_queue(full, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    try:
        order = Order.model_validate(ORDER)
        properties = message_properties(order, Priority(effective=5, broker=4))
        with pytest.raises(PublishError):
            await publish_confirmed(broker.channel, encode_order(order), properties, queue=full, confirm_within=5)
    finally:
        await delete_queues(full)


async def test_closed_connection_is_503_and_not_ready(settings: Settings, broker: Broker) -> None:
    async with app_client(create_app(settings, publisher=OrderPublisher(broker, settings))) as client:
        assert (await client.get("/readyz")).status_code == 200
        await broker.connection.close()
        response = await client.post("/orders", json=ORDER)
        assert response.status_code == 503
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/healthz")).status_code == 200


async def test_backlog_view_is_503_while_the_broker_is_away(settings: Settings, broker: Broker) -> None:
    app = create_app(
        settings,
        publisher=OrderPublisher(broker, settings),
        backlog=lambda: queue_stats(broker.connection, broker.topology),
    )
    async with app_client(app) as client:
        assert (await client.get("/queues")).status_code == 200
        await broker.connection.close()
        response = await client.get("/queues")
    assert response.status_code == 503
    assert "retry-after" in response.headers
    assert response.json()["details"][0]["type"] == "broker_unavailable"


async def test_the_publish_time_travels_to_the_microsecond(settings: Settings, broker: Broker) -> None:
    """`x-orderlane-published-at` is whole microseconds: a float header would travel as a 32-bit float, two minutes
    coarse at today's times, and every wait measured from it (the consumer's orderlane_order_wait_seconds, a
    handler's `current_delivery().published_at`) would be noise."""
    before = time.time()
    await OrderPublisher(broker, settings).publish(Order(order_id="timed", items=["a"]))
    after = time.time()
    [message] = await drain(settings.queue)
    published_at = published_at_of(message.headers)
    assert published_at is not None
    assert before - 0.001 <= published_at <= after + 0.001
