"""The wire contract: the order a client posts and a consumer receives.

`OrderBase` holds what orderlane itself reads (order_id, priority, user_type, deadline); `Order` adds `items` (as the
FastAPI + Celery service it replaces had them) and is the model used unless ORDERLANE_ORDER_MODEL names a subclass of
its own (docs/your-order.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter

from broker.errors import ConfigurationError
from broker.references import load_reference

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


def _in_utc(value: datetime) -> datetime:
    """One spelling per instant: the same deadline written with another offset is the same order (same body)."""
    return value.astimezone(UTC)


def _is_none(value: object) -> bool:
    return value is None


class OrderBase(BaseModel):
    """What every order has: `priority` 0 is the most urgent, 9 the least (the convention of the FastAPI + Celery
    service orderlane replaces); `deadline`, if any, the time after which its handler must not start
    (docs/deadlines.md). Subclass it (or `Order`) for an order of your own: fields may be added; these are what
    orderlane reads."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    order_id: OrderId
    priority: Annotated[int, Field(ge=0, le=9), BeforeValidator(_integral_number)] = 5
    user_type: Annotated[UserType, BeforeValidator(_null_means_regular, json_schema_input_type=UserType | None)] = (
        "regular"
    )
    deadline: Annotated[AwareDatetime, AfterValidator(_in_utc)] | None = Field(
        default=None,
        exclude_if=_is_none,
        description="The time by which its handler must have started, RFC 3339 with an offset: past it the order is "
        "not processed but expires (posted after it: 422 `deadline_passed`)",
    )
    """Kept in UTC; left out of the body when None, so that an order without one has the body (and the fingerprint)
    it had before deadlines existed."""


class Order(OrderBase):
    """The default order: a list of item names, as the FastAPI + Celery original had it."""

    items: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=100)]


Model = TypeVar("Model", bound=OrderBase)
DEFAULT_ORDER_MODEL = "broker.messages:Order"


def load_order_model(reference: str) -> type[OrderBase]:
    """The model ORDERLANE_ORDER_MODEL names (`package.module:Model`); a ConfigurationError unless it is an
    OrderBase subclass."""
    model = load_reference(reference, "order model")
    if not (isinstance(model, type) and issubclass(model, OrderBase)):
        raise ConfigurationError(f"order model {reference!r} is not a subclass of broker.OrderBase (or broker.Order)")
    return model


def is_json_media_type(content_type: str | None) -> bool:
    """`application/json` or `application/*+json`, parameters such as `charset` allowed."""
    if content_type is None:
        return False
    if content_type == CONTENT_TYPE:
        return True
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == CONTENT_TYPE or (media_type.startswith("application/") and media_type.endswith("+json"))


def encode_order(order: OrderBase) -> bytes:
    """The message body for an order: compact JSON, UTF-8."""
    return order.model_dump_json().encode()


def decode_order(body: bytes, model: type[Model]) -> Model:
    """Parse and validate a message body; raises pydantic's ValidationError on anything but a valid `model`."""
    return model.model_validate_json(body)
