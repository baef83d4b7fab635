"""The endpoints: parse, validate, publish, answer."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from api.responses import JSONResponse, error_response, problem, validation_error_response
from broker.errors import PublishError
from broker.messages import Order
from broker.publisher import Publisher
from broker.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Services:
    """What the lifespan hands to every request."""

    settings: Settings
    publisher: Publisher


def services(request: Request) -> Services:
    """The only reader of `request.state`."""
    found: Services = request.state.services
    return found


class BodyTooLarge(Exception):
    pass


def is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


async def read_body(request: Request, limit: int) -> bytes:
    """Read at most `limit` bytes, refusing early on a declared Content-Length and again while streaming."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


async def post_order(request: Request) -> Response:
    state = services(request)
    if not is_json(request.headers.get("content-type")):
        return error_response(415, [problem("unsupported_media_type", "send the order as application/json")])
    try:
        body = await read_body(request, state.settings.max_body_bytes)
    except BodyTooLarge:
        limit = state.settings.max_body_bytes
        return error_response(413, [problem("body_too_large", f"the body is larger than {limit} bytes")])
    except ClientDisconnect:
        return error_response(400, [problem("client_disconnect", "the client went away before sending the body")])
    try:
        order = Order.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if any(error["type"] == "json_invalid" for error in errors):
            return error_response(400, [problem("json_invalid", "the body is not valid JSON")])
        return validation_error_response(exc)
    try:
        receipt = await state.publisher.publish(order)
    except PublishError as exc:
        logger.warning("order %s not accepted: %s", order.order_id, exc)
        retry_after = {"Retry-After": str(state.settings.retry_after_seconds)}
        return error_response(503, [problem("broker_unavailable", "the order was not stored; retry")], retry_after)
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
