"""FastAPI and Taskiq (taskiq-aio-pika): the order becomes a task, sent with `.kiq()`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from bench.intake_peers.order import AMQP_URL, QUEUE, OrderRequest
from bench.peers import taskiq_broker

broker = taskiq_broker(AMQP_URL, QUEUE)


@broker.task(task_name="orderlane.process_order")
async def process_order(order: dict[str, object]) -> None:
    """Run by a taskiq worker, not here."""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await broker.startup()  # declares the queue
    yield
    await broker.shutdown()


app = FastAPI(lifespan=lifespan)


@app.post("/orders", status_code=202)
async def post_order(order: OrderRequest) -> dict[str, str]:
    await process_order.kicker().with_labels(priority=order.broker_priority).kiq(order.model_dump())
    return {"status": "accepted", "order_id": order.order_id}
