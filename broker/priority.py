"""The one place where the API's priorities become RabbitMQ's.

Clients speak the language of the FastAPI + Celery original: 0 is the most urgent, 9 the least, and a VIP order is
boosted to `vip_priority`. RabbitMQ delivers the *highest* number first, so the broker priority runs the other way."""

from __future__ import annotations

from dataclasses import dataclass

from broker.messages import OrderBase

LEAST_URGENT = 9
PRIORITIES = range(LEAST_URGENT + 1)
"""Every effective priority, most urgent first."""


@dataclass(frozen=True, slots=True)
class Priority:
    effective: int
    """The order's priority after the VIP boost, in the API's convention (0 most urgent)."""
    broker: int
    """The AMQP priority put on the message, 0..max_priority, higher is delivered first."""


def effective_priority(order: OrderBase, *, vip_priority: int) -> int:
    """A VIP order is never less urgent than `vip_priority`; everyone else keeps what they asked for."""
    if order.user_type == "vip":
        return min(order.priority, vip_priority)
    return order.priority


def broker_priority(effective: int, *, max_priority: int) -> int:
    """Map urgency 0..9 monotonically onto 0..max_priority: 0 becomes max_priority, 9 becomes 0.

    With fewer broker levels than API levels, neighbouring levels share one broker level, never swap.
    """
    urgency = LEAST_URGENT - effective
    return urgency * max_priority // LEAST_URGENT


def prioritize(order: OrderBase, *, vip_priority: int, max_priority: int) -> Priority:
    effective = effective_priority(order, vip_priority=vip_priority)
    return Priority(effective=effective, broker=broker_priority(effective, max_priority=max_priority))
