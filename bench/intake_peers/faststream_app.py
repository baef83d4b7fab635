"""FastAPI and FastStream: a RabbitBroker started with the app, each order published persistent (FastStream's
publisher confirms are on by default)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from faststream.rabbit import RabbitBroker, RabbitQueue

from bench.intake_peers.order import AMQP_URL, MAX_PRIORITY, QUEUE, OrderRequest

broker = RabbitBroker(AMQP_URL)
queue = RabbitQueue(QUEUE, durable=True, arguments={"x-max-priority": MAX_PRIORITY})


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await broker.start()
    await broker.declare_queue(queue)
    yield
    await broker.stop()


app = FastAPI(lifespan=lifespan)


@app.post("/orders", status_code=202)
async def post_order(order: OrderRequest) -> dict[str, str]:
    await broker.publish(order, queue=queue, persist=True, priority=order.broker_priority, message_id=order.order_id)
    return {"status": "accepted", "order_id": order.order_id}
