"""`GET /openapi.json`: the API described, its bodies taken from the pydantic models themselves."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from broker.messages import ORDER_ID, OrderBase
from broker.status import OrderStatus

OPENAPI_VERSION = "3.1.0"
ORDER_ID_SCHEMA = ORDER_ID.json_schema()


class Accepted(BaseModel):
    """The answer to an order the broker confirmed."""

    status: Literal["accepted"] = "accepted"
    order_id: str
    priority: int
    """The effective priority, 0 (most urgent) to 9."""
    broker_priority: int
    queue: str
    expected_start: datetime | None = None
    """An estimate of when its handler starts (the backlog ahead of it at the consumers' drain rate); null when
    there is none (no status store, or the rate is not measured yet)."""


class ErrorBody(BaseModel):
    """Every error: `details` holds pydantic's errors for a 422, one `{type, msg}` otherwise."""

    status: Literal["error"]
    details: list[dict[str, Any]]


class QueueDepth(BaseModel):
    queue: str
    messages: int | None
    consumers: int | None


class LaneEstimate(BaseModel):
    """What an order entering this lane now is expected to wait for (broker/estimates.py): an estimate."""

    queue: str
    ahead: int
    """Ready orders in this lane and in the lanes more urgent than it."""
    drain_per_second: float | None
    """Orders the consumers finish per second, all lanes together; null until measured."""
    expected_wait_seconds: float | None
    """`ahead` at that rate; null when not known, or when orders wait and nothing drains them."""


class Backlog(BaseModel):
    queues: list[QueueDepth]
    lanes: list[LaneEstimate] = []
    """Most urgent first; empty without a status store (the drain rate is read there)."""


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def openapi_document(version: str, order_model: type[OrderBase]) -> dict[str, Any]:
    """The document, with `order_model` (ORDERLANE_ORDER_MODEL) as the body of `POST /orders`."""
    refs, schemas = models_json_schema(
        [
            (order_model, "validation"),
            (Accepted, "serialization"),
            (OrderStatus, "serialization"),
            (ErrorBody, "serialization"),
            (Backlog, "serialization"),
        ],
        ref_template="#/components/schemas/{model}",
    )
    # Each model's reference as pydantic named it: a user's model may share a name with one of ours.
    order_ref = refs[(order_model, "validation")]
    accepted_ref, status_ref, error_ref, backlog_ref = (
        refs[(model, "serialization")] for model in (Accepted, OrderStatus, ErrorBody, Backlog)
    )

    def _error(description: str) -> dict[str, Any]:
        return _json(description, error_ref)

    unavailable = _error(
        "The broker is down, refused or did not confirm the order, or ORDERLANE_HTTP_MAX_CONCURRENCY requests are "
        "in flight (`overloaded`); see `Retry-After`"
    )
    retry_after = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    unavailable["headers"] = retry_after
    rate_limited = _error("This API key sends more than ORDERLANE_RATE_LIMIT_PER_KEY allows; see `Retry-After`")
    rate_limited["headers"] = retry_after
    refused = _error(
        "This API key sends more than ORDERLANE_RATE_LIMIT_PER_KEY allows (`rate_limited`), or admission refused the "
        "order: orders of its priority are expected to wait longer than ORDERLANE_ADMISSION_MAX_WAIT "
        "(`backlog_over_budget`); nothing was published; see `Retry-After`"
    )
    refused["headers"] = retry_after
    accepted = _json("Stored by the broker, persistent; `Location` is its status", accepted_ref)
    accepted["headers"] = {"Location": {"schema": {"type": "string"}, "description": "`/orders/{order_id}`"}}
    status_unknown = _error("The status store does not answer: the order's state is unknown for now")
    status_unknown["headers"] = retry_after
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "orderlane", "version": version, "description": "Orders in, by priority, on RabbitMQ."},
        "paths": {
            "/orders": {
                "post": {
                    "summary": "Accept an order once the broker has stored it",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": order_ref}},
                    },
                    "responses": {
                        "200": _json("This order was posted before: its status; nothing was published", status_ref),
                        "202": accepted,
                        "400": _error("The body is not JSON"),
                        "401": _error("An API key is required and none valid was sent"),
                        "413": _error("The body is larger than ORDERLANE_MAX_BODY_BYTES"),
                        "415": _error("The content type is not application/json"),
                        "408": _error("The body did not arrive within ORDERLANE_HTTP_BODY_TIMEOUT"),
                        "409": _error("The order_id is taken by a different order"),
                        "422": _error(
                            "The JSON is not a valid order (details are pydantic's errors), or its deadline has "
                            "passed (`deadline_passed`); nothing was published"
                        ),
                        "429": refused,
                        "503": unavailable,
                    },
                    "security": [{"bearer": []}, {}],
                }
            },
            "/orders/{order_id}": {
                "get": {
                    "summary": "Where an order is: accepted, processing, retrying, processed, dead_lettered, "
                    "expired, ...",
                    "parameters": [
                        {"name": "order_id", "in": "path", "required": True, "schema": ORDER_ID_SCHEMA},
                    ],
                    "responses": {
                        "200": _json("Its status", status_ref),
                        "401": _error("An API key is required and none valid was sent"),
                        "404": _error("Unknown (never posted, or its status expired), or this API keeps no status"),
                        "422": _error("Not a valid order_id"),
                        "429": rate_limited,
                        "503": status_unknown,
                    },
                    "security": [{"bearer": []}, {}],
                }
            },
            "/queues": {"get": {"summary": "The backlog", "responses": {"200": _json("Depths", backlog_ref)}}},
            "/healthz": {"get": {"summary": "Alive", "responses": {"200": {"description": "The process runs"}}}},
            "/readyz": {
                "get": {
                    "summary": "Ready",
                    "responses": {"200": {"description": "Connected"}, "503": _error("The broker is unreachable")},
                }
            },
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "Text"}}}},
        },
        "components": {
            "schemas": schemas["$defs"],
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
