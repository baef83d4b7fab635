"""FastAPI and Celery, the original's stack (on RabbitMQ): `apply_async` called from an `async def` endpoint, as the
original does, so each publish blocks the event loop for as long as it takes to write. Celery publishes without
publisher confirms: a 202 here is not a stored order."""

from __future__ import annotations

from celery import Celery
from fastapi import FastAPI

from bench.intake_peers.order import AMQP_URL, MAX_PRIORITY, QUEUE, OrderRequest

celery = Celery("orders", broker=AMQP_URL)
celery.conf.task_queue_max_priority = MAX_PRIORITY
celery.conf.broker_connection_retry_on_startup = True


@celery.task(name="orderlane.process_order")  # type: ignore[untyped-decorator]  # celery has no types
def process_order(order_data: dict[str, object]) -> None:
    """Run by a celery worker, not here."""


app = FastAPI()


@app.post("/orders", status_code=202)
async def post_order(order: OrderRequest) -> dict[str, str]:
    process_order.apply_async(kwargs={"order_data": order.model_dump()}, queue=QUEUE, priority=order.broker_priority)
    return {"status": "accepted", "order_id": order.order_id}
