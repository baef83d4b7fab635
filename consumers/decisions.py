"""What happens to an order after one attempt: the one decision, shared by the consumer and the test kit.

The ack policy (consumers/policy.py) acts on it, republishing and acking; `consumers.testing.run_handler` returns
it, so a handler's test sees exactly what the consumer would do next. Deciding is pure: no broker, no store.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from broker.errors import PermanentFailure
from consumers.retry import RetryPolicy

DeadLetterReason = Literal["invalid", "permanent", "exhausted"]


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
    PermanentFailure (`permanent`), or its last attempt failed (`exhausted`)."""

    reason: DeadLetterReason
    error: Exception


Outcome = Acked | Retried | DeadLettered

ACKED = Acked()
"""The one Acked value: deciding a success allocates nothing."""


def decide(
    failure: Exception | None, attempt: int, policy: RetryPolicy, rng: random.Random, *, invalid: bool = False
) -> Outcome:
    """What follows attempt `attempt`. `failure` is what the handler raised (a TimeoutError if it overran), None if
    it returned; with `invalid`, it is the parse's InvalidMessage instead (the body is not a valid order: never
    retried). A handler's own InvalidMessage is retried as any other error. `rng` draws the delay's jitter."""
    if failure is None:
        return ACKED
    if invalid:
        return DeadLettered("invalid", failure)
    if isinstance(failure, PermanentFailure):
        return DeadLettered("permanent", failure)
    if policy.should_retry(attempt):
        return Retried(attempt + 1, policy.delay_seconds(attempt, rng), failure)
    return DeadLettered("exhausted", failure)
