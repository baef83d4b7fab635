"""Consumers run in-process by tests: prefetch 1, so deliveries come strictly one after another."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aio_pika

from broker.connection import Broker
from broker.messages import Order, encode_order
from broker.settings import Settings
from broker.status_store import StatusStore
from consumers.delivery import Handler
from consumers.runner import Consumer


def order_message(order_id: str, **properties: object) -> aio_pika.Message:
    """A valid order as a raw AMQP message, published past the API."""
    body = encode_order(Order(order_id=order_id, items=["a"]))
    return aio_pika.Message(body, content_type="application/json", message_id=order_id, **properties)  # type: ignore[arg-type]


async def start_consumer(
    broker: Broker, handler: Handler, settings: Settings, status: StatusStore | None = None
) -> Consumer:
    consumer = Consumer(broker, handler, settings, prefetch=1, concurrency=1, status=status)
    await consumer.start()
    return consumer


@asynccontextmanager
async def consuming(
    broker: Broker, handler: Handler, settings: Settings, status: StatusStore | None = None
) -> AsyncIterator[Consumer]:
    consumer = await start_consumer(broker, handler, settings, status)
    try:
        yield consumer
    finally:
        await consumer.stop(grace_seconds=5)
