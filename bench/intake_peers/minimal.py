"""What a user could write in about 40 lines: Starlette, pydantic and one aio-pika confirm channel."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aio_pika
from aio_pika.abc import AbstractChannel
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.intake_peers.order import AMQP_URL, QUEUE, QUEUE_ARGUMENTS, OrderRequest


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    connection = await aio_pika.connect_robust(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(QUEUE, durable=True, arguments=QUEUE_ARGUMENTS)
        app.state.channel = channel
        yield


async def read_order(request: Request) -> OrderRequest | JSONResponse:
    """The order, or the 422 that answers a body that is not one."""
    try:
        return OrderRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        return JSONResponse({"errors": exc.errors(include_url=False, include_context=False)}, status_code=422)


async def publish(channel: AbstractChannel, order: OrderRequest) -> None:
    message = aio_pika.Message(
        order.model_dump_json().encode(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=order.order_id,
        priority=order.broker_priority,
    )
    await channel.default_exchange.publish(message, routing_key=QUEUE, mandatory=True)


def accepted(order: OrderRequest) -> JSONResponse:
    return JSONResponse({"status": "accepted", "order_id": order.order_id}, status_code=202)


async def post_order(request: Request) -> JSONResponse:
    order = await read_order(request)
    if isinstance(order, JSONResponse):
        return order
    await publish(request.app.state.channel, order)
    return accepted(order)


app = Starlette(routes=[Route("/orders", post_order, methods=["POST"])], lifespan=lifespan)
