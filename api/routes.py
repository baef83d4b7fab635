"""The endpoints: parse, validate, publish, answer. Failures are raised; `api.errors` maps them to statuses."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from api.errors import RequestRejected
from api.openapi import Accepted, Backlog, QueueDepth
from api.responses import JSONResponse, error_response, problem
from api.state import services
from broker.connection import BROKER_ERRORS
from broker.errors import BrokerUnavailable
from broker.messages import Order, is_json_media_type


async def read_body(request: Request, limit: int) -> bytes:
    """Read at most `limit` bytes, refusing early on a declared Content-Length and again while streaming."""
    too_large = RequestRejected(413, "body_too_large", f"the body is larger than {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
    except ClientDisconnect:
        raise RequestRejected(400, "client_disconnect", "the client went away before sending the body") from None
    return bytes(body)


async def post_order(request: Request) -> Response:
    state = services(request)
    if not is_json_media_type(request.headers.get("content-type")):
        raise RequestRejected(415, "unsupported_media_type", "send the order as application/json")
    order = Order.model_validate_json(await read_body(request, state.settings.max_body_bytes))
    with state.metrics.publish_seconds.time():
        receipt = await state.publisher.publish(order)
    state.metrics.accepted.labels(priority=str(receipt.priority.effective)).inc()
    accepted = Accepted(
        order_id=receipt.order_id,
        priority=receipt.priority.effective,
        broker_priority=receipt.priority.broker,
        queue=receipt.queue,
    )
    return JSONResponse(accepted.model_dump(), status_code=202)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    if services(request).publisher.is_ready:
        return JSONResponse({"status": "ready"})
    return error_response(503, [problem("broker_unavailable", "the broker connection is down")])


async def queues(request: Request) -> Response:
    """The backlog the seed asks to watch: ready messages and consumers of every queue, the DLQ included."""
    state = services(request)
    if state.backlog is None:
        raise RequestRejected(503, "backlog_unavailable", "this API instance has no broker connection to ask")
    if not state.publisher.is_ready:
        raise BrokerUnavailable("the broker connection is down")
    try:
        stats = await state.backlog()
    except (*BROKER_ERRORS, RuntimeError) as exc:  # RuntimeError: aio-pika while it reconnects
        raise BrokerUnavailable(f"the broker did not answer: {exc!r}") from exc
    depths = [QueueDepth(queue=s.queue, messages=s.messages, consumers=s.consumers) for s in stats]
    return JSONResponse(Backlog(queues=depths).model_dump())


async def metrics(request: Request) -> Response:
    registry = services(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    return JSONResponse(services(request).openapi)
