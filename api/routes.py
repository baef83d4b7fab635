"""The endpoints: parse, validate, publish, answer. Failures are raised; `api.errors` maps them to statuses."""

from __future__ import annotations

import asyncio
import math

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from api.errors import RequestRejected
from api.openapi import Accepted, Backlog, LaneEstimate, QueueDepth
from api.responses import JSONResponse
from api.state import services
from broker.connection import BROKER_ERRORS
from broker.errors import BrokerUnavailable, PublishBlocked, StatusUnavailable
from broker.estimates import LaneWait
from broker.messages import ORDER_ID, is_json_media_type
from broker.status import OrderStatus


async def read_body(request: Request, limit: int, within: float) -> bytes:
    """Read at most `limit` bytes, refusing early on a declared Content-Length and again while streaming, and
    within `within` seconds: a client that trickles its body must not hold a connection (and a slot) for ever."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit)
    body = bytearray()
    try:
        async with asyncio.timeout(within):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise body_too_large(limit)
    except ClientDisconnect:
        raise RequestRejected(400, "client_disconnect", "the client went away before sending the body") from None
    except TimeoutError:
        message = f"the body did not arrive within {within:g}s (ORDERLANE_HTTP_BODY_TIMEOUT)"
        raise RequestRejected(408, "body_timeout", message, headers={"Connection": "close"}) from None
    return bytes(body)


def body_too_large(limit: int) -> RequestRejected:
    return RequestRejected(413, "body_too_large", f"the body is larger than {limit} bytes")


async def post_order(request: Request) -> Response:
    state = services(request)
    if not is_json_media_type(request.headers.get("content-type")):
        raise RequestRejected(415, "unsupported_media_type", "send the order as application/json")
    settings = state.settings
    body = await read_body(request, settings.max_body_bytes, settings.http_body_timeout)
    order = state.order_model.model_validate_json(body)
    taken = await state.intake.take(order)
    if isinstance(taken, OrderStatus):
        return JSONResponse(taken.model_dump(mode="json"), headers={"Content-Location": status_path(taken.order_id)})
    accepted = Accepted(
        order_id=taken.order_id,
        priority=taken.priority.effective,
        broker_priority=taken.priority.broker,
        queue=taken.queue,
        expected_start=taken.expected_start,
    )
    location = {"Location": status_path(taken.order_id)} if state.status is not None else None
    return JSONResponse(accepted.model_dump(), status_code=202, headers=location)


def status_path(order_id: str) -> str:
    return f"/orders/{order_id}"  # order_id's characters need no escaping in a path


async def get_order(request: Request) -> Response:
    state = services(request)
    order_id = ORDER_ID.validate_python(request.path_params["order_id"])
    if state.status is None:
        raise RequestRejected(404, "status_disabled", "this API keeps no order status: ORDERLANE_STATUS_URL is empty")
    status = await state.status.get(order_id)
    if status is None:
        raise RequestRejected(404, "unknown_order", f"no order {order_id!r} is known (or its status has expired)")
    return JSONResponse(status.model_dump(mode="json"))


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready while the broker connection is up and not blocked (an alarm); and, with ORDERLANE_STATUS_REQUIRED, while
    the status store is."""
    state = services(request)
    if not state.publisher.is_ready:
        raise BrokerUnavailable("the broker connection is down")
    if state.publisher.is_blocked:
        raise PublishBlocked("the broker blocks publishing (a memory or disk alarm): orders are refused until it lifts")
    status_store = "off" if state.status is None else "up" if await state.status.answers() else "away"
    if status_store == "away" and state.settings.status_required:
        raise StatusUnavailable("the status store does not answer")
    return JSONResponse({"status": "ready", "status_store": status_store})


async def queues(request: Request) -> Response:
    """The backlog to watch (the Celery-era advice orderlane keeps): ready messages and consumers of every queue, the
    DLQ included."""
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
    lanes = [] if state.estimates is None else [lane_estimate(wait) for wait in state.estimates.lanes]
    return JSONResponse(Backlog(queues=depths, lanes=lanes).model_dump())


def lane_estimate(wait: LaneWait) -> LaneEstimate:
    seconds = wait.seconds
    return LaneEstimate(
        queue=wait.queue,
        ahead=wait.ahead,
        drain_per_second=wait.per_second,
        expected_wait_seconds=seconds if seconds is not None and math.isfinite(seconds) else None,
    )


async def metrics(request: Request) -> Response:
    return Response(services(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    return JSONResponse(services(request).openapi)
