"""Every HTTP answer that is not a success, in one table; every error body is `{"status": "error", "details": [...]}`.
An `overloaded` answer also closes its connection.

| what happened                                   | status | `details[0].type`          | headers      |
|-------------------------------------------------|--------|----------------------------|--------------|
| the body is not JSON                            | 400    | `json_invalid`             |              |
| the client went away before its body was in     | 400    | `client_disconnect`        |              |
| no valid API key (api/auth.py)                  | 401    | `unauthorized`             | WWW-Authenticate |
| no order with that id; no status store          | 404    | `unknown_order`, `status_disabled` |      |
| no such path (Starlette)                        | 404    | `http_error`               |              |
| a method the path does not take (Starlette)     | 405    | `http_error`               | Allow        |
| the body did not arrive in time                 | 408    | `body_timeout`             | Connection: close |
| OrderIdConflict: a different order holds the id | 409    | `order_id_conflict`        |              |
| the body is too large                           | 413    | `body_too_large`           |              |
| not application/json                            | 415    | `unsupported_media_type`   |              |
| the order model refuses it (pydantic)           | 422    | pydantic's errors          |              |
| DeadlinePassed: the order's deadline has passed | 422    | `deadline_passed`          |              |
| the API key is over its rate (api/auth.py)      | 429    | `rate_limited`             | Retry-After  |
| BacklogOverBudget: admission refused the order  | 429    | `backlog_over_budget`      | Retry-After  |
| PublishError: the broker did not confirm        | 503    | `broker_unavailable`       | Retry-After  |
| PublishBlocked: a memory or disk alarm          | 503    | `broker_blocked`           | Retry-After  |
| BrokerUnavailable: the connection is down       | 503    | `broker_unavailable`       | Retry-After  |
| StatusUnavailable: the status store is away     | 503    | `status_unavailable`       | Retry-After  |
| OrderInProgress: another request publishes it   | 503    | `order_in_progress`        | Retry-After: 1 |
| too many requests in flight (api/limits.py)     | 503    | `overloaded`               | Retry-After: 1 |
| this instance has no broker to ask (`/queues`)  | 503    | `backlog_unavailable`      |              |

Domain errors (broker/errors.py) name what happened; this module alone decides their status. The middleware that
answer before a route runs (limits, keys) take their answers from here too.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from api.responses import JSONResponse, error_response, problem, validation_error_response
from broker.errors import (
    BacklogOverBudget,
    BrokerUnavailable,
    DeadlinePassed,
    OrderIdConflict,
    OrderInProgress,
    PublishBlocked,
    PublishError,
    StatusUnavailable,
    retry_after_seconds,
)

logger = logging.getLogger(__name__)

ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]


class RequestRejected(Exception):
    """The request cannot become an order, or be answered, for a reason of HTTP's: its media type, its size, its
    path. Its status is its own."""

    def __init__(
        self, status_code: int, error_type: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_type = error_type
        self.message = message
        self.headers = headers


def exception_handlers(retry_after_seconds: int) -> dict[type[Exception], ExceptionHandler]:
    """The table above, for Starlette; `retry_after_seconds` (ORDERLANE_RETRY_AFTER_SECONDS) is what a 503 asks."""
    retry_after = {"Retry-After": str(retry_after_seconds)}

    def unavailable(error_type: str, message: str, headers: Mapping[str, str] = retry_after) -> JSONResponse:
        return error_response(503, [problem(error_type, message)], headers)

    async def rejected(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestRejected)
        return error_response(exc.status_code, [problem(exc.error_type, exc.message)], exc.headers)

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ValidationError)
        if any(error["type"] == "json_invalid" for error in exc.errors(include_url=False, include_input=False)):
            return error_response(400, [problem("json_invalid", "the body is not valid JSON")])
        return validation_error_response(exc)

    async def conflict(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, OrderIdConflict)
        return error_response(409, [problem("order_id_conflict", str(exc))])

    async def over_budget(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BacklogOverBudget)
        headers = {"Retry-After": str(exc.retry_after_seconds)}
        return error_response(429, [problem("backlog_over_budget", str(exc))], headers)

    async def in_progress(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, OrderInProgress)
        return unavailable("order_in_progress", str(exc), {"Retry-After": str(exc.retry_after_seconds)})

    async def unconfirmed(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PublishError)
        logger.warning("order not accepted: %s", exc)
        message = "the broker did not confirm the order, so it may not be stored; retry with the same order_id"
        return unavailable("broker_unavailable", message)

    async def blocked(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PublishBlocked)
        return unavailable("broker_blocked", str(exc))

    async def broker_down(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BrokerUnavailable)
        return unavailable("broker_unavailable", str(exc))

    async def status_away(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StatusUnavailable)
        return unavailable("status_unavailable", f"{exc}: the order's state is unknown for now")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_response(exc.status_code, [problem("http_error", exc.detail)], exc.headers)

    return {
        RequestRejected: rejected,
        ValidationError: invalid,
        OrderIdConflict: conflict,
        OrderInProgress: in_progress,
        DeadlinePassed: deadline_passed,
        BacklogOverBudget: over_budget,
        PublishError: unconfirmed,
        PublishBlocked: blocked,
        BrokerUnavailable: broker_down,
        StatusUnavailable: status_away,
        HTTPException: http_error,
    }


async def deadline_passed(request: Request, exc: Exception) -> Response:
    """The order came too late to be of use: posting it again will not help, so a 422, not a 429 or 503."""
    assert isinstance(exc, DeadlinePassed)
    return error_response(422, [problem("deadline_passed", f"{exc}; nothing was published")])


def overloaded(limit: int) -> JSONResponse:
    """Too many requests in flight: refused at once, and the connection closed after (shedding connections is part
    of shedding load, and its body, if any, is not read)."""
    message = f"{limit} requests are in flight (ORDERLANE_HTTP_MAX_CONCURRENCY); retry shortly"
    return error_response(503, [problem("overloaded", message)], {"Retry-After": "1", "Connection": "close"})


def unauthorized() -> JSONResponse:
    return error_response(
        401,
        [problem("unauthorized", "send a valid API key as `Authorization: Bearer <key>`")],
        {"WWW-Authenticate": 'Bearer realm="orderlane"'},
    )


def rate_limited(wait: float) -> JSONResponse:
    message = f"this API key sends more than ORDERLANE_RATE_LIMIT_PER_KEY allows; retry in {wait:.2f}s"
    return error_response(429, [problem("rate_limited", message)], {"Retry-After": str(retry_after_seconds(wait))})
