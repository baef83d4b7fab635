"""The wire contract: the order a client posts and a consumer receives."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter

UserType = Literal["regular", "vip"]
CONTENT_TYPE = "application/json"
OrderId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
ORDER_ID: TypeAdapter[str] = TypeAdapter(OrderId)
"""Validates an order_id on its own (a path parameter), by the same rule as the order's field."""


def _null_means_regular(value: Any) -> Any:
    return "regular" if value is None else value


def _integral_number(value: Any) -> Any:
    """JSON has one kind of number, and its schema's `integer` takes 6.0 as six; strict validation would not."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


class Order(BaseModel):
    """An order: `priority` 0 is the most urgent, 9 the least (the seed's convention)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    order_id: OrderId
    priority: Annotated[int, Field(ge=0, le=9), BeforeValidator(_integral_number)] = 5
    items: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=100)]
    user_type: Annotated[UserType, BeforeValidator(_null_means_regular, json_schema_input_type=UserType | None)] = (
        "regular"
    )


def is_json_media_type(content_type: str | None) -> bool:
    """`application/json` or `application/*+json`, parameters such as `charset` allowed."""
    if content_type is None:
        return False
    if content_type == CONTENT_TYPE:
        return True
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == CONTENT_TYPE or (media_type.startswith("application/") and media_type.endswith("+json"))


def encode_order(order: Order) -> bytes:
    """The message body for an order: compact JSON, UTF-8."""
    return order.model_dump_json().encode()


def decode_order(body: bytes) -> Order:
    """Parse and validate a message body; raises pydantic's ValidationError on anything but a valid order."""
    return Order.model_validate_json(body)
