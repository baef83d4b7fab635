"""The errors orderlane raises across package boundaries.

    OrderlaneError
    ├── ConfigurationError  an option that cannot work (a handler that does not import, ...)
    ├── BrokerUnavailable   the broker did not answer in time (startup budget spent, connection down)
    ├── BrokerRefused       the broker answered but refused us: login, virtual host, permissions
    ├── TopologyConflict    a queue exists with other arguments (the broker's 406 PRECONDITION_FAILED)
    ├── PublishError        the broker did not take a message: nack, return (unroutable), timeout, channel down
    │   └── PublishBlocked  not even tried: the broker blocks publishing (a memory or disk alarm)
    ├── OrderIdConflict     an order submitted with an order_id that a different order holds
    ├── OrderInProgress     the same order is being published by another request right now: retry shortly
    ├── BacklogOverBudget   admission: an order of its priority would wait longer than ORDERLANE_ADMISSION_MAX_WAIT
    ├── DeadlinePassed      an order past its deadline: refused at intake, or expired by a consumer (never processed)
    ├── InvalidMessage      a delivery whose body is not a valid order (never retried)
    ├── ClientClosed        an order client used before it was opened or after it was closed (broker/client.py)
    ├── PermanentFailure    raised by a handler: this order can never succeed, dead-letter it now
    └── StatusUnavailable   the status store (Redis) did not answer, or was found away less than a second ago

They name what happened, never an HTTP status: api/errors.py maps them to HTTP answers in one table, and the Python
client (broker/client.py) raises them as they are.

Library exceptions (aio-pika, aiormq, pydantic) are translated into these where they are caught, with
`raise ... from exc`, so callers never import aio-pika to handle a failure.
"""

from __future__ import annotations

import math
from datetime import datetime


class OrderlaneError(Exception):
    """Base of every error orderlane raises on purpose."""


class ConfigurationError(OrderlaneError):
    """An option or setting that cannot work, found at start-up."""


class BrokerUnavailable(OrderlaneError):
    """The broker could not be reached, or the connection is down right now."""


class BrokerRefused(OrderlaneError):
    """The broker answered but refused the login, the virtual host or an operation; retrying will not help."""


class TopologyConflict(OrderlaneError):
    """A queue exists on the broker with arguments other than the ones we declare."""

    def __init__(self, queue: str, detail: str) -> None:
        self.queue = queue
        self.detail = detail
        super().__init__(
            f"queue {queue!r} already exists with other arguments: {detail}. "
            "Delete the queue (its messages too) or set ORDERLANE_QUEUE to another name."
        )


class PublishError(OrderlaneError):
    """The broker did not confirm a message: it was nacked, returned, timed out or the channel was down."""


class PublishBlocked(PublishError):
    """The broker blocks this connection's publishes (`connection.blocked`, a memory or disk alarm): the message
    was not sent, and would only have waited in the client until the alarm clears."""


class OrderIdConflict(OrderlaneError):
    """The order_id is held by a different order (another body); nothing was published."""

    def __init__(self, order_id: str) -> None:
        self.order_id = order_id
        super().__init__(f"order_id {order_id!r} is already used by a different order")


class OrderInProgress(OrderlaneError):
    """Another request (in another process) is publishing this very order right now; its outcome is not known yet,
    so submit it again shortly."""

    retry_after_seconds = 1

    def __init__(self, order_id: str) -> None:
        self.order_id = order_id
        super().__init__(f"order {order_id!r} is being published by another request; retry")


class BacklogOverBudget(OrderlaneError):
    """Admission refused the order (nothing was published): orders of its priority are expected to wait
    `expected_wait` seconds, more than ORDERLANE_ADMISSION_MAX_WAIT allows. Submit it again after
    `retry_after_seconds`: once the orders ahead of it now have been processed, when it would have started had it
    been taken. Sooner, under a sustained flood, it would most likely be refused again (the orders that came meanwhile
    keep the backlog at the budget), and a storm of retries costs the API what the urgent orders need."""

    def __init__(self, order_id: str, priority: int, expected_wait: float, max_wait: float) -> None:
        self.order_id = order_id
        self.priority = priority
        self.expected_wait = expected_wait
        self.retry_after_seconds = retry_after_seconds(expected_wait if expected_wait < math.inf else max_wait)
        shown = f"{expected_wait:.1f}s" if expected_wait < math.inf else "without end (nothing drains the queues)"
        super().__init__(
            f"order {order_id!r}: orders of priority {priority} are expected to wait {shown}, more than the "
            f"{max_wait:g}s ORDERLANE_ADMISSION_MAX_WAIT allows; retry in {self.retry_after_seconds}s"
        )


def retry_after_seconds(wait: float) -> int:
    """Whole seconds to wait before retrying, never 0: a client told 0 would come straight back."""
    return max(1, math.ceil(wait))


class DeadlinePassed(OrderlaneError):
    """The order's deadline has passed, or passes before its handler could start: at intake nothing is published;
    in a consumer the order expires (dead-lettered, status `expired`) instead of being processed. `when` says which
    moment the deadline came before."""

    def __init__(self, order_id: str, deadline: datetime, when: str = "has passed") -> None:
        self.order_id = order_id
        self.deadline = deadline
        super().__init__(f"order {order_id!r}: its deadline {deadline.isoformat()} {when}")


class InvalidMessage(OrderlaneError):
    """A delivery whose body is not a valid order; it is dead-lettered, never retried."""


class ClientClosed(OrderlaneError):
    """An AsyncOrderClient or OrderClient used outside its `with` block; a client opens once."""


class PermanentFailure(OrderlaneError):
    """Raise from a handler for an order that can never succeed: it goes to the dead-letter queue at once."""


class StatusUnavailable(OrderlaneError):
    """The status store did not answer; orders still flow, but their status is unknown until it is back."""
