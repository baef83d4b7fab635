"""The one ack policy: run the handler on a delivery and settle the message exactly once.

| outcome                                   | what happens                                                     |
|-------------------------------------------|------------------------------------------------------------------|
| a redelivery (or a copy marked to be      | ack, without running the handler (a redelivery after a crash)    |
| checked) of an order `processed` already  |                                                                  |
| the handler returned                      | `processed` written to the status store, then ack                |
| the body is not a valid order             | republished to `<queue>.dlq` with the reason, then acked          |
| the handler raised PermanentFailure       | republished to `<queue>.dlq` with the error, then acked           |
| the handler raised or overran its timeout | attempt < max: republished to `<queue>.retry.<attempt>` with a    |
|                                           | per-message TTL that sends it back to the work queue, then acked; |
|                                           | last attempt: republished to `<queue>.dlq`, then acked            |
| the order's deadline has passed (before   | `expired` written to the status store, republished to             |
| its handler starts)                       | `<queue>.dlq` with DeadlinePassed, then acked; a copy of an order |
|                                           | the store says was processed is acked as above instead            |
| the handler raised, and its retry would   | `expired`, republished to `<queue>.dlq` with DeadlinePassed, then |
| start after the order's deadline          | acked: it does not wait in a delay queue for nothing              |
| the task was cancelled (forced stop)      | nothing: unacked, the broker redelivers it                        |
| the delivering channel is gone            | nothing: its delivery tags are void, the broker redelivers it     |

Every republish is persistent and confirmed before the ack, so the broker always holds the order. What the row is
comes from consumers/decisions.py and the run from consumers/invoker.py, the same code the test kit runs
(consumers/testing.py); this module acts on the decision.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

import aio_pika
from aiormq import spec

from broker.connection import Broker
from broker.errors import InvalidMessage, PublishError
from broker.headers import CHECK_PROCESSED_HEADER, PRIORITY_HEADER, attempt_of, int_header
from broker.messages import OrderBase
from broker.priority import PRIORITIES
from broker.publisher import publish_confirmed
from broker.settings import Settings
from broker.topology import Lane
from consumers.deadlines import Deadlines
from consumers.decisions import ACKED, Acked, DeadLettered, Outcome, Retried, decide, expiry
from consumers.delivery import (
    Delivery,
    Handler,
    Incoming,
    describe,
    log_fields,
    parse_order,
)
from consumers.invoker import Invoker
from consumers.metrics import ConsumerMetrics
from consumers.retry import Copyable, RetryPolicy, dead_letter_message, retry_message
from consumers.status import Attempt, StatusRecorder

if TYPE_CHECKING:
    from broker.tracing import Tracing

logger = logging.getLogger(__name__)

REQUEUE_PAUSE_SECONDS = 1.0
"""After a failed republish the message is requeued, but not at once: a missing queue must not become a hot loop."""

Republish = Callable[[bytes, spec.Basic.Properties, str], Awaitable[None]]
"""Publish a copy (body, properties) to a queue and return once the broker holds it; PublishError otherwise."""


class Settleable(Incoming, Copyable, Protocol):
    """A delivery the policy settles: a consumer's (consumers.received.Received) or the in-memory broker's."""

    @property
    def channel_is_closed(self) -> bool: ...
    def ack(self) -> None: ...
    def requeue(self) -> None: ...


def republish_confirmed(broker: Broker, settings: Settings) -> Republish:
    """How the consumer moves a copy: on the broker's confirm channel, confirmed within ORDERLANE_PUBLISH_TIMEOUT."""

    async def republish(body: bytes, properties: spec.Basic.Properties, queue: str) -> None:
        await publish_confirmed(broker.channel, body, properties, queue=queue, confirm_within=settings.publish_timeout)

    return republish


class AckPolicy:
    """Runs the handler on one delivery at a time per calling task, within the handler timeout, and settles it:
    retries and dead letters are copies handed to `republish`, to a lane's delay queue or to `dead_letter_queue`.
    `on_handler_time`, if given, gets each handler run's time in seconds (the automatic tuning samples them)."""

    def __init__(
        self,
        republish: Republish,
        dead_letter_queue: str,
        handler: Handler,
        settings: Settings,
        metrics: ConsumerMetrics,
        status: StatusRecorder,
        *,
        tracing: Tracing | None = None,
        on_handler_time: Callable[[float], None] | None = None,
    ) -> None:
        self._republish = republish
        self._dead_letter_queue = dead_letter_queue
        self._status = status
        self._tracing = tracing
        self._settings = settings
        self._order_model = settings.order_type
        self._metrics = metrics
        self._retry_policy = RetryPolicy.from_settings(settings)
        self.deadlines = Deadlines(settings.handler_timeout)
        self._invoker = Invoker(handler, self.deadlines, self._observe)
        self._rng = random.Random()
        self._on_handler_time = on_handler_time

    async def process(self, message: Settleable, lane: Lane, held_seconds: float) -> Outcome:
        """Process one delivery that waited `held_seconds` in the process for a free slot; return what was decided
        (Acked too for an order processed before, whose handler did not run again)."""
        received_at = time.time() - held_seconds  # it was held from the moment it arrived
        try:
            order = parse_order(message, self._order_model, max_body_bytes=self._settings.max_body_bytes)
        except InvalidMessage as exc:
            number = attempt_of(message.headers)
            logger.error("invalid message dead-lettered: %s", exc, extra=message_fields(message))
            refused = decide(exc, number, self._retry_policy, self._rng, invalid=True)
            assert isinstance(refused, DeadLettered)
            self._metrics.dead_lettered.labels(priority="unknown", reason=refused.reason).inc()
            await self._dead_letter(message, exc, number)
            return refused
        delivery = describe(message, order, received_at)
        queue = lane.work.name
        if order.deadline is not None and (late := expiry(order, time.time())) is not None:
            return await self._expire(message, delivery, queue, late)
        check = delivery.redelivered or message.headers.get(CHECK_PROCESSED_HEADER) is True
        attempt = await self._status.begin(delivery, queue, message.body, check=check)
        if attempt is None:
            return self._processed_before(message, delivery)
        metrics = self._metrics.of(delivery.priority)
        try:
            metrics.held_seconds.observe(held_seconds)
            self._metrics.observe_wait(message, metrics)
            if self._tracing is None:
                failure = await self._invoker.run(order, delivery)
            else:
                failure = await self._traced_run(self._tracing, message, order, delivery, queue)
        finally:
            # The handler stopped: never shown as processing from here. A forced stop (CancelledError) writes
            # nothing more: unacked, the broker redelivers it.
            self._status.end(attempt)
        outcome = decide(failure, delivery.attempt, self._retry_policy, self._rng, order=order, now=time.time())
        if isinstance(outcome, Acked):
            metrics.processed.inc()
            self._status.processed(attempt, then=message.ack)  # a redelivery then finds it done
            return outcome
        metrics.failed.inc()
        error = outcome.error
        if isinstance(outcome, DeadLettered) and outcome.reason == "expired":
            return await self._expire(message, delivery, queue, outcome, attempt)
        if isinstance(outcome, DeadLettered) and outcome.reason == "permanent":
            logger.error("permanent failure, dead-lettered: %r", error, extra=_fields(delivery))
            metrics.permanent.inc()
            await self._give_up(message, delivery, attempt, error)
            return outcome
        logger.warning("handler failed: %r", error, exc_info=error, extra=_fields(delivery))
        if isinstance(outcome, Retried):
            metrics.retried.inc()
            await self._status.retrying(attempt, outcome.delay_seconds, error)
            await self._retry(message, lane, delivery.attempt, outcome.delay_seconds)
        else:
            metrics.exhausted.inc()
            await self._give_up(message, delivery, attempt, error)
        return outcome

    async def _traced_run(
        self, tracing: Tracing, message: Settleable, order: OrderBase, delivery: Delivery, queue: str
    ) -> Exception | None:
        """The handler's run in a span of the order's trace."""
        fields = {"priority": delivery.priority, "attempt": delivery.attempt}
        with tracing.processing(message.headers, order, fields, queue) as span:
            failure = await self._invoker.run(order, delivery)
            if failure is not None:
                tracing.failed(span, failure)
        return failure

    def _observe(self, elapsed: float) -> None:
        self._metrics.handler_seconds.observe(elapsed)
        if self._on_handler_time is not None:
            self._on_handler_time(elapsed)

    async def _expire(
        self, message: Settleable, delivery: Delivery, queue: str, outcome: DeadLettered, attempt: Attempt | None = None
    ) -> Outcome:
        """Dead-letter an order whose deadline came before its handler could start (`attempt`: the one that failed
        and whose retry would start too late), recorded `expired`; unless the store says the order was processed: a
        copy of an order processed in time (a redelivery whose ack was lost) is acked as done."""
        previous = await self._status.expired(delivery, queue, outcome.error, attempt)
        if previous == "processed":
            return self._processed_before(message, delivery)
        logger.warning("expired, dead-lettered: %s", outcome.error, extra=_fields(delivery))
        metrics = self._metrics.of(delivery.priority)
        metrics.expired.inc()
        metrics.expired_dead_letters.inc()
        attempts = delivery.attempt if attempt is not None else delivery.attempt - 1  # this one never started
        await self._dead_letter(message, outcome.error, attempts)
        return outcome

    def _processed_before(self, message: Settleable, delivery: Delivery) -> Outcome:
        """The store says the order was processed already (this is a redelivery whose ack was lost): ack it, and
        never run the handler again."""
        logger.info("already processed: acked without running the handler again", extra=_fields(delivery))
        self._metrics.already_processed.inc()
        message.ack()
        return ACKED

    async def _give_up(self, message: Settleable, delivery: Delivery, attempt: Attempt, failure: Exception) -> None:
        await self._status.dead_lettered(attempt, failure)
        await self._dead_letter(message, failure, delivery.attempt)

    async def _retry(self, message: Settleable, lane: Lane, failed_attempt: int, delay: float) -> None:
        copy = retry_message(message, next_attempt=failed_attempt + 1, delay_seconds=delay)
        await self._move(message, copy, lane.retry_queue(failed_attempt).name)

    async def _dead_letter(self, message: Settleable, error: BaseException, attempts: int) -> None:
        reason = str(error) or repr(error)
        copy = dead_letter_message(message, error_type=type(error).__name__, error=reason, attempts=attempts)
        await self._move(message, copy, self._dead_letter_queue)

    async def _move(self, message: Settleable, copy: aio_pika.Message, queue: str) -> None:
        """Republish `copy` to `queue`, confirmed, then ack the original; on failure requeue the original."""
        if message.channel_is_closed:
            logger.warning("channel gone before settling; the broker redelivers it", extra=message_fields(message))
            return
        try:
            await self._republish(copy.body, copy.properties, queue)
        except PublishError as exc:
            logger.error("could not move it to %r (%s); requeueing it", queue, exc, extra=message_fields(message))
            await asyncio.sleep(REQUEUE_PAUSE_SECONDS)
            message.requeue()
            return
        message.ack()


def message_fields(message: Settleable) -> dict[str, object]:
    """Log fields for a message whose body may not be an order: what its properties and headers say."""
    headers = message.headers
    priority = int_header(headers, PRIORITY_HEADER, -1)
    return log_fields(message.message_id, priority if priority in PRIORITIES else None, attempt_of(headers))


def _fields(delivery: Delivery) -> dict[str, object]:
    return log_fields(delivery.order_id, delivery.priority, delivery.attempt)
