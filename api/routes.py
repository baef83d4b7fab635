"""The endpoints: parse, validate, publish, answer. Failures are raised; `api.errors` maps them to statuses."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from api.errors import RequestRejected
from api.responses import JSONResponse, error_response, problem
from broker.messages import Order, is_json_media_type
from broker.publisher import Publisher
from broker.settings import Settings


@dataclass(frozen=True, slots=True)
class Services:
    """What the lifespan hands to every request."""

    settings: Settings
    publisher: Publisher


def services(request: Request) -> Services:
    """The only reader of `request.state`."""
    found: Services = request.state.services
    return found


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
    receipt = await state.publisher.publish(order)
    return JSONResponse(
        {
            "status": "accepted",
            "order_id": receipt.order_id,
            "priority": receipt.priority.effective,
            "broker_priority": receipt.priority.broker,
            "queue": receipt.queue,
        },
        status_code=202,
    )


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    if services(request).publisher.is_ready:
        return JSONResponse({"status": "ready"})
    return error_response(503, [problem("broker_unavailable", "the broker connection is down")])
