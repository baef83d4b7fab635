"""What happens to an order after one attempt: the one decision, shared by the consumer and the test kit.

The ack policy (consumers/policy.py) acts on it, republishing and acking; `consumers.testing.run_handler` returns
it, so a handler's test sees exactly what the consumer would do next. Deciding is pure: no broker, no store, no
clock (the time is an argument).

An order's deadline is checked twice: before its handler starts (`expiry`), and when a failed attempt would be
retried (`decide`): a retry due after the deadline expires the order now instead of keeping it in a delay queue for
nothing. A copy back from a delay queue is checked before it starts like any delivery.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from broker.errors import DeadlinePassed, PermanentFailure
from broker.messages import OrderBase
from consumers.retry import RetryPolicy

DeadLetterReason = Literal["invalid", "permanent", "exhausted", "expired"]


@dataclass(frozen=True, slots=True)
class Acked:
    """The handler returned (or the order was processed before): the message is acked."""


@dataclass(frozen=True, slots=True)
class Retried:
    """The attempt failed and another is due: the order comes back as `next_attempt` after `delay_seconds`."""

    next_attempt: int
    delay_seconds: float
    error: Exception


@dataclass(frozen=True, slots=True)
class DeadLettered:
    """The order goes to the dead-letter queue: its body is not a valid order (`invalid`), the handler raised
    PermanentFailure (`permanent`), its last attempt failed (`exhausted`), or its deadline came before its handler
    could start (`expired`, with a DeadlinePassed)."""

    reason: DeadLetterReason
    error: Exception


Outcome = Acked | Retried | DeadLettered

ACKED = Acked()
"""The one Acked value: deciding a success allocates nothing."""


def expiry(order: OrderBase, at: float, when: str = "passed before its handler started") -> DeadLettered | None:
    """DeadLettered("expired") for an order whose deadline comes before `at` (seconds since the epoch), when its
    handler would start: now, or after a retry's delay (`when` says which, in the DeadlinePassed). None for an order
    within its deadline or without one."""
    deadline = order.deadline
    if deadline is None or at < deadline.timestamp():
        return None
    return DeadLettered("expired", DeadlinePassed(order.order_id, deadline, when))


def decide(
    failure: Exception | None,
    attempt: int,
    policy: RetryPolicy,
    rng: random.Random,
    *,
    invalid: bool = False,
    order: OrderBase | None = None,
    now: float = 0.0,
) -> Outcome:
    """What follows attempt `attempt`. `failure` is what the handler raised (a TimeoutError if it overran), None if
    it returned; with `invalid`, it is the parse's InvalidMessage instead (the body is not a valid order: never
    retried). A handler's own InvalidMessage is retried as any other error. `rng` draws the delay's jitter. Given
    `order` and `now` (when deciding, seconds since the epoch), a retry that would start after the order's deadline
    (`now` plus the delay) expires it now."""
    if failure is None:
        return ACKED
    if invalid:
        return DeadLettered("invalid", failure)
    if isinstance(failure, PermanentFailure):
        return DeadLettered("permanent", failure)
    if policy.should_retry(attempt):
        delay = policy.delay_seconds(attempt, rng)
        if order is not None and order.deadline is not None:
            when = f"comes before its retry in {delay:.2f}s (attempt {attempt} failed: {failure!r})"
            late = expiry(order, now + delay, when)
            if late is not None:
                return late
        return Retried(attempt + 1, delay, failure)
    return DeadLettered("exhausted", failure)
