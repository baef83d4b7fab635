"""The one place where a failure becomes an HTTP status. Every error body is `{"status": "error", "details": [...]}`.

| raised                                   | status | details                             |
|------------------------------------------|--------|-------------------------------------|
| RequestRejected (media type, size, ...)  | its own (400, 408, 409, 413, 415)    |
| pydantic ValidationError, invalid JSON   | 400    | `json_invalid`                      |
| pydantic ValidationError, otherwise      | 422    | pydantic's errors                   |
| PublishError (broker down, nack, return) | 503    | `broker_unavailable`, Retry-After   |
| PublishBlocked (memory or disk alarm)    | 503    | `broker_blocked`, Retry-After       |
| BrokerUnavailable (`/queues`, broker away) | 503  | `broker_unavailable`, Retry-After   |
| StatusUnavailable (status store away)    | 503    | `status_unavailable`, Retry-After   |
| HTTPException (404, 405, ...)            | its own                              |
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from api.responses import error_response, problem, validation_error_response
from api.state import services
from broker.errors import BrokerUnavailable, PublishBlocked, PublishError, StatusUnavailable

logger = logging.getLogger(__name__)


class RequestRejected(Exception):
    """The request cannot become an order, for a reason that is not the order's content."""

    def __init__(
        self, status_code: int, error_type: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_type = error_type
        self.message = message
        self.headers = headers


async def rejected(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestRejected)
    return error_response(exc.status_code, [problem(exc.error_type, exc.message)], exc.headers)


async def invalid(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationError)
    if any(error["type"] == "json_invalid" for error in exc.errors(include_url=False, include_input=False)):
        return error_response(400, [problem("json_invalid", "the body is not valid JSON")])
    return validation_error_response(exc)


async def not_published(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PublishError)
    logger.warning("order not accepted: %s", exc)
    services(request).metrics.broker_errors.inc()
    message = "the broker did not confirm the order, so it may not be stored; retry with the same order_id"
    return unavailable(request, message)


async def not_sent(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PublishBlocked)
    services(request).metrics.broker_errors.inc()
    message = f"{exc}: the order was not published; retry with the same order_id"
    return unavailable(request, message, error_type="broker_blocked")


async def broker_down(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BrokerUnavailable)
    return unavailable(request, str(exc))


async def status_away(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StatusUnavailable)
    message = f"{exc}: the order's state is unknown for now"
    return unavailable(request, message, error_type="status_unavailable")


def unavailable(request: Request, message: str, error_type: str = "broker_unavailable") -> Response:
    retry_after = {"Retry-After": str(services(request).settings.retry_after_seconds)}
    return error_response(503, [problem(error_type, message)], retry_after)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, [problem("http_error", exc.detail)], exc.headers)


EXCEPTION_HANDLERS: Mapping[Any, Any] = {
    RequestRejected: rejected,
    ValidationError: invalid,
    PublishError: not_published,
    PublishBlocked: not_sent,
    BrokerUnavailable: broker_down,
    StatusUnavailable: status_away,
    HTTPException: http_error,
}
