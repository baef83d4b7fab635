"""Reading a delivery: the order in its body (untrusted until parsed) and what a handler may know about it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from broker.errors import InvalidMessage
from broker.headers import PRIORITY_HEADER, attempt_of, int_header, published_at_of
from broker.messages import OrderBase, decode_order, is_json_media_type
from broker.priority import PRIORITIES
from consumers.received import Headed

Handler = Callable[[Any], Awaitable[None]]
"""A handler receives the validated order, an instance of the order model (ORDERLANE_ORDER_MODEL).
It never acks: it returns (ack) or raises (the order is retried, or
dead-lettered at once for PermanentFailure). It may run more than once for one order: make it idempotent on
`order.order_id`. It runs in a handler slot, a long-lived task that runs one order after another: a context
variable it sets itself stays set in that slot for the next order."""


@dataclass(frozen=True, slots=True)
class Delivery:
    order_id: str
    priority: int
    """The effective priority (0 most urgent), as the API computed it."""
    attempt: int
    redelivered: bool
    """True when the broker delivered this message before (to this or another consumer) without an ack."""
    published_at: float | None = field(default=None, compare=False)
    """When the API published it (seconds since the epoch, from its header): `time.time() - published_at` is how
    long the order has waited so far. None without a precise header (broker.headers.PUBLISHED_AT_HEADER)."""
    received_at: float | None = field(default=None, compare=False)
    """When this process received it (seconds since the epoch): the wait from there is the consumer's own.
    Neither time takes part in comparing two deliveries."""


class Body(Protocol):
    """What parsing reads of a message: a delivery (consumers.received.Received), or the test kit's."""

    @property
    def body(self) -> bytes: ...
    @property
    def content_type(self) -> str | None: ...


class Incoming(Body, Headed, Protocol):
    """What a handler's Delivery is made from: a delivery off a channel, or one of the in-memory broker's."""

    @property
    def redelivered(self) -> bool: ...


def log_fields(order_id: str | None, priority: int | None, attempt: int) -> dict[str, object]:
    """What every log line about a message carries (as `extra=`)."""
    return {"order_id": order_id, "priority": priority, "attempt": attempt}


def parse_order(message: Body, model: type[OrderBase], *, max_body_bytes: int) -> OrderBase:
    """Treat the body as untrusted: bounded size, JSON only, a valid `model`."""
    if len(message.body) > max_body_bytes:
        raise InvalidMessage(f"body of {len(message.body)} bytes exceeds {max_body_bytes}")
    if message.content_type is not None and not is_json_media_type(message.content_type):
        raise InvalidMessage(f"content type {message.content_type!r} is not JSON")
    try:
        return decode_order(message.body, model)
    except ValidationError as exc:
        raise InvalidMessage(f"not a valid order: {exc.error_count()} errors, first: {exc.errors()[0]['msg']}") from exc


def describe(message: Incoming, order: OrderBase, received_at: float | None = None) -> Delivery:
    """The delivery as a handler sees it. The effective priority comes from the API's header when it holds one
    of 0..9 (anything else is not ours to trust), else from the order itself."""
    headers = message.headers
    priority = int_header(headers, PRIORITY_HEADER, order.priority)
    return Delivery(
        order_id=order.order_id,
        priority=priority if priority in PRIORITIES else order.priority,
        attempt=attempt_of(headers),
        redelivered=message.redelivered,
        published_at=published_at_of(headers),
        received_at=received_at,
    )


_current_delivery: ContextVar[Delivery] = ContextVar("orderlane_delivery")


def current_delivery() -> Delivery:
    """The delivery being processed by the calling handler."""
    return _current_delivery.get()


@contextmanager
def delivering(delivery: Delivery) -> Iterator[None]:
    """Make `delivery` what `current_delivery()` returns while the handler runs. A handler slot is a long-lived
    task that runs one delivery after another; the variable is reset after each, so none sees another's."""
    token = _current_delivery.set(delivery)
    try:
        yield
    finally:
        _current_delivery.reset(token)
