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
| the task was cancelled (forced stop)      | nothing: unacked, the broker redelivers it                        |
| the delivering channel is gone            | nothing: its delivery tags are void, the broker redelivers it     |

Every republish is persistent and confirmed before the ack, so the broker always holds the order.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING

import aio_pika

from broker.connection import Broker
from broker.errors import InvalidMessage, PermanentFailure, PublishError
from broker.messages import OrderBase
from broker.priority import PRIORITIES
from broker.publisher import CHECK_PROCESSED_HEADER, PRIORITY_HEADER, publish_confirmed
from broker.settings import Settings
from broker.topology import Lane
from consumers.deadlines import Deadlines
from consumers.delivery import (
    Delivery,
    Handler,
    attempt_of,
    delivering,
    describe,
    int_header,
    log_fields,
    parse_order,
)
from consumers.metrics import ConsumerMetrics
from consumers.received import Received
from consumers.retry import RetryPolicy, dead_letter_message, retry_message
from consumers.status import Attempt, StatusRecorder
from consumers.threads import InThreads

if TYPE_CHECKING:
    from broker.tracing import Tracing

logger = logging.getLogger(__name__)

REQUEUE_PAUSE_SECONDS = 1.0
"""After a failed republish the message is requeued, but not at once: a missing queue must not become a hot loop."""


class AckPolicy:
    """Runs the handler on one delivery at a time per calling task, within the handler timeout, and settles it."""

    def __init__(
        self,
        broker: Broker,
        handler: Handler,
        settings: Settings,
        metrics: ConsumerMetrics,
        status: StatusRecorder | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._broker = broker
        self._status = status
        self._tracing = tracing
        self._handler = handler
        self._settings = settings
        self._order_model = settings.order_type
        self._metrics = metrics
        self._retry_policy = RetryPolicy.from_settings(settings)
        self.deadlines = Deadlines(settings.handler_timeout)
        self._rng = random.Random()
        self.handler_times: list[float] | None = None
        """When a list, every handler's run time is appended to it (the automatic tuning reads and empties it)."""

    async def process(self, message: Received, lane: Lane, held_seconds: float) -> None:
        """Process one delivery that waited `held_seconds` in the process for a free slot."""
        try:
            order = parse_order(message, self._order_model, max_body_bytes=self._settings.max_body_bytes)
        except InvalidMessage as exc:
            attempt = attempt_of(message)
            logger.error("invalid message dead-lettered: %s", exc, extra=message_fields(message))
            self._metrics.dead_lettered.labels(priority="unknown", reason="invalid").inc()
            await self._dead_letter(message, exc, attempt)
            return
        delivery = describe(message, order)
        queue = lane.work.name
        tracked: Attempt | None = None
        if self._status is not None:
            check = delivery.redelivered or message.headers.get(CHECK_PROCESSED_HEADER) is True
            tracked = await self._status.begin(delivery, queue, message.body, check=check)
            if tracked is None:
                logger.info("already processed: acked without running the handler again", extra=_fields(delivery))
                self._metrics.already_processed.inc()
                message.ack()
                return
        metrics = self._metrics.of(delivery.priority)
        metrics.held_seconds.observe(held_seconds)
        self._metrics.observe_wait(message, metrics)
        try:
            with delivering(delivery):
                if self._tracing is None:
                    failure = await self._run_handler(order)
                else:
                    failure = await self._traced_run(self._tracing, message, order, delivery, queue)
        except asyncio.CancelledError:  # a forced stop: unacked, redelivered, never shown as processing here
            if self._status is not None and tracked is not None:
                self._status.abandon(tracked)
            raise
        if failure is None:
            metrics.processed.inc()
            if self._status is not None and tracked is not None:
                self._status.processed(tracked, then=message.ack)  # a redelivery then finds it done
            else:
                message.ack()
            return
        metrics.failed.inc()
        if isinstance(failure, PermanentFailure):
            logger.error("permanent failure, dead-lettered: %r", failure, extra=_fields(delivery))
            metrics.permanent.inc()
            await self._give_up(message, delivery, tracked, failure)
            return
        logger.warning("handler failed: %r", failure, exc_info=failure, extra=_fields(delivery))
        if self._retry_policy.should_retry(delivery.attempt):
            metrics.retried.inc()
            delay = self._retry_policy.delay_seconds(delivery.attempt, self._rng)
            if self._status is not None and tracked is not None:
                await self._status.retrying(tracked, delay, failure)
            await self._retry(message, lane, delivery.attempt, delay)
        else:
            metrics.exhausted.inc()
            await self._give_up(message, delivery, tracked, failure)

    async def _traced_run(
        self, tracing: Tracing, message: Received, order: OrderBase, delivery: Delivery, queue: str
    ) -> Exception | None:
        """`_run_handler` in a span of the order's trace."""
        fields = {"priority": delivery.priority, "attempt": delivery.attempt}
        with tracing.processing(message.headers, order, fields, queue) as span:
            failure = await self._run_handler(order)
            if failure is not None:
                tracing.failed(span, failure)
        return failure

    async def _run_handler(self, order: OrderBase) -> Exception | None:
        """Run the handler within ORDERLANE_HANDLER_TIMEOUT; return what it raised (a TimeoutError if it overran),
        or None. A cancellation that is not the timeout's (a forced stop) propagates: the message stays unacked."""
        task = asyncio.current_task()
        assert task is not None
        if isinstance(self._handler, InThreads):
            await self._handler.free_thread()  # before the deadline: waiting for a thread is not the handler's time
        started = time.perf_counter()
        self.deadlines.arm(task)
        failure: Exception | None = None
        try:
            await self._handler(order)
        except asyncio.CancelledError:
            if not self.deadlines.disarm(task):
                raise
            if task.uncancel() > 0:  # cancelled by a stop as well, not only by the watchdog: stay unacked
                raise
            timeout = self._settings.handler_timeout
            failure = TimeoutError(f"the handler ran longer than ORDERLANE_HANDLER_TIMEOUT={timeout:g}s")
        except Exception as exc:
            failure = exc
        finally:
            if self.deadlines.disarm(task):  # it returned or raised, swallowing the watchdog's cancellation
                task.uncancel()
            elapsed = time.perf_counter() - started
            self._metrics.handler_seconds.observe(elapsed)
            if self.handler_times is not None:
                self.handler_times.append(elapsed)
        return failure

    async def _give_up(
        self, message: Received, delivery: Delivery, tracked: Attempt | None, failure: Exception
    ) -> None:
        if self._status is not None and tracked is not None:
            await self._status.dead_lettered(tracked, failure)
        await self._dead_letter(message, failure, delivery.attempt)

    async def _retry(self, message: Received, lane: Lane, failed_attempt: int, delay: float) -> None:
        copy = retry_message(message, next_attempt=failed_attempt + 1, delay_seconds=delay)
        await self._move(message, copy, lane.retry_queue(failed_attempt).name)

    async def _dead_letter(self, message: Received, error: BaseException, attempts: int) -> None:
        reason = str(error) or repr(error)
        copy = dead_letter_message(message, error_type=type(error).__name__, error=reason, attempts=attempts)
        await self._move(message, copy, self._broker.topology.dead_letter.name)

    async def _move(self, message: Received, copy: aio_pika.Message, queue: str) -> None:
        """Republish `copy` to `queue`, confirmed, then ack the original; on failure requeue the original."""
        if message.channel_is_closed:
            logger.warning("channel gone before settling; the broker redelivers it", extra=message_fields(message))
            return
        try:
            await publish_confirmed(
                self._broker.channel,
                copy.body,
                copy.properties,
                queue=queue,
                confirm_within=self._settings.publish_timeout,
            )
        except PublishError as exc:
            logger.error("could not move it to %r (%s); requeueing it", queue, exc, extra=message_fields(message))
            await asyncio.sleep(REQUEUE_PAUSE_SECONDS)
            message.requeue()
            return
        message.ack()


def message_fields(message: Received) -> dict[str, object]:
    """Log fields for a message whose body may not be an order: what its properties and headers say."""
    priority = int_header(message, PRIORITY_HEADER, -1)
    return log_fields(message.message_id, priority if priority in PRIORITIES else None, attempt_of(message))


def _fields(delivery: Delivery) -> dict[str, object]:
    return log_fields(delivery.order_id, delivery.priority, delivery.attempt)
