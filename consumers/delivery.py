"""What a handler may know about the delivery it is processing, besides the order itself."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from broker.messages import Order

Handler = Callable[[Order], Awaitable[None]]
"""A handler receives the validated order. It never acks: it returns (ack) or raises (the message is
dead-lettered). It may run more than once for one order: make it idempotent on `order.order_id`."""


@dataclass(frozen=True, slots=True)
class Delivery:
    order_id: str
    priority: int
    """The effective priority (0 most urgent), as the API computed it."""
    attempt: int
    redelivered: bool
    """True when the broker delivered this message before (to this or another consumer) without an ack."""


_current_delivery: ContextVar[Delivery] = ContextVar("orderlane_delivery")


def current_delivery() -> Delivery:
    """The delivery being processed by the calling handler (each delivery runs in its own task)."""
    return _current_delivery.get()


@contextmanager
def delivering(delivery: Delivery) -> Iterator[None]:
    """Make `delivery` what `current_delivery()` returns inside the block."""
    token = _current_delivery.set(delivery)
    try:
        yield
    finally:
        _current_delivery.reset(token)
