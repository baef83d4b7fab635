"""The consumer: takes orders from the work queue, runs the handler, and settles each message exactly once.

The ack policy lives in `Consumer._settle` and nowhere else:

| outcome                                   | what happens                                                     |
|-------------------------------------------|------------------------------------------------------------------|
| the handler returned                      | ack                                                              |
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
import signal
import time
from collections.abc import Awaitable
from contextlib import AsyncExitStack

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel, ConsumerTag
from prometheus_client import start_http_server

from broker.connection import BROKER_ERRORS, Broker, open_broker
from broker.errors import InvalidMessage, PermanentFailure, PublishError
from broker.messages import Order
from broker.priority import PRIORITIES
from broker.publisher import PRIORITY_HEADER, publish_confirmed
from broker.settings import Prefetch, Settings
from broker.topology import Lane, declare_queue
from consumers.autoprefetch import START_PREFETCH, AutoPrefetch
from consumers.deadlines import Deadlines
from consumers.delivery import (
    Delivery,
    Handler,
    attempt_of,
    describe,
    int_header,
    log_fields,
    parse_order,
    set_current_delivery,
)
from consumers.metrics import ConsumerMetrics
from consumers.retry import RetryPolicy, dead_letter_message, retry_message

logger = logging.getLogger(__name__)

REQUEUE_PAUSE_SECONDS = 1.0
"""After a failed republish the message is requeued, but not at once: a missing queue must not become a hot loop."""


class Consumer:
    """Consumes one lane's work queue on a channel of its own, whose QoS is the lane's prefetch. Every delivery
    runs in its own task, so the prefetch is also the handler concurrency."""

    def __init__(
        self,
        broker: Broker,
        handler: Handler,
        settings: Settings,
        *,
        lane: Lane,
        prefetch: Prefetch,
        metrics: ConsumerMetrics | None = None,
    ) -> None:
        self._broker = broker
        self.lane = lane
        self._auto = (
            AutoPrefetch(lambda: len(self._in_flight), self._take_handler_times, self._set_prefetch)
            if prefetch == "auto"
            else None
        )
        self.prefetch = START_PREFETCH if prefetch == "auto" else prefetch
        self._handler_times: list[float] | None = [] if self._auto else None
        self._background: list[asyncio.Task[None]] = []
        self._stopping = False
        self._resubscribing = asyncio.Lock()
        self.metrics = metrics or ConsumerMetrics()
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractQueue | None = None
        self._handler = handler
        self._settings = settings
        self._retry_policy = RetryPolicy.from_settings(settings)
        self._deadlines = Deadlines(settings.handler_timeout)
        self._rng = random.Random()
        self._tag: ConsumerTag | None = None
        self._in_flight: set[asyncio.Task[object]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._forced = asyncio.Event()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def start(self) -> None:
        if self._channel is not None:
            raise RuntimeError("consumer already started")
        self._channel = await self._broker.connection.channel(publisher_confirms=False)
        await self._channel.set_qos(prefetch_count=self.prefetch)
        # Declared (not just looked up) on this channel, so that the robust channel restores the consumer too.
        self._queue = await declare_queue(self._channel, self.lane.work)
        self._deadlines.start()
        if self._auto is not None:
            self._background.append(asyncio.create_task(self._auto.run()))
        self._tag = await self._queue.consume(self._on_message)
        logger.info("consuming queue %r, prefetch %s", self._queue.name, "auto" if self._auto else self.prefetch)

    async def _set_prefetch(self, prefetch: int) -> None:
        """RabbitMQ fixes a consumer's prefetch when it subscribes (per-consumer QoS), so a new prefetch means a
        new subscription: subscribe again under the new QoS, then cancel the old one. The orders the old one holds
        stay ackable on this channel; for a moment both hold some."""
        async with self._resubscribing:
            if self._stopping or self._channel is None or self._channel.is_closed or self._queue is None:
                return
            old_tag = self._tag
            try:
                await self._channel.set_qos(prefetch_count=prefetch)
                self._tag = await self._queue.consume(self._on_message)
                if old_tag is not None:
                    await self._queue.cancel(old_tag)
            except BROKER_ERRORS as exc:
                logger.warning("could not change the prefetch to %d: %s", prefetch, exc)
                return
            self.prefetch = prefetch

    def _take_handler_times(self) -> list[float]:
        taken, self._handler_times = self._handler_times or [], []
        return taken

    async def stop(self, grace_seconds: float) -> None:
        """Stop taking messages, let in-flight handlers finish and settle for up to `grace_seconds` (or until
        `force()`), then cancel the rest: unacked, so the broker redelivers them."""
        self._stopping = True
        async with self._resubscribing:  # let a change of prefetch under way finish; later ones see _stopping
            for task in self._background:
                task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._tag is not None and self._queue is not None:
            try:
                await self._queue.cancel(self._tag)
            except BROKER_ERRORS as exc:
                logger.warning("could not cancel the consumer cleanly: %s", exc)
            self._tag = None
        # Deliveries the broker sent before its cancel-ok got their tasks created as they arrived; one turn of
        # the loop lets each of them register as in flight before we look.
        await asyncio.sleep(0)
        logger.info("stopping: waiting up to %.0fs for %d in-flight orders", grace_seconds, self.in_flight)
        waiters = [asyncio.create_task(self._idle.wait()), asyncio.create_task(self._forced.wait())]
        try:
            await asyncio.wait(waiters, timeout=grace_seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if self._in_flight:
            logger.warning("cancelling %d handlers still running", self.in_flight)
            await self._abort()
        await self._deadlines.close()
        if self._channel is not None:
            await self._channel.close()  # anything still unacked goes back to the queue now

    def force(self) -> None:
        """Make a pending or later `stop()` cancel in-flight handlers at once."""
        self._forced.set()

    async def _abort(self) -> None:
        cancelled = tuple(self._in_flight)
        for task in cancelled:
            task.cancel()
        await asyncio.gather(*cancelled, return_exceptions=True)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        self._idle.clear()
        self.metrics.in_flight.inc()
        try:
            await self._settle(message)
        finally:
            self.metrics.in_flight.dec()
            self._in_flight.discard(task)
            if not self._in_flight:
                self._idle.set()

    async def _settle(self, message: AbstractIncomingMessage) -> None:
        try:
            order = parse_order(message, max_body_bytes=self._settings.max_body_bytes)
        except InvalidMessage as exc:
            attempt = attempt_of(message)
            logger.error("invalid message dead-lettered: %s", exc, extra=_message_fields(message))
            self.metrics.dead_lettered.labels(priority="unknown", reason="invalid").inc()
            await self._dead_letter(message, exc, attempt)
            return
        delivery = describe(message, order)
        metrics = self.metrics.of(delivery.priority)
        self.metrics.observe_wait(message, metrics)
        set_current_delivery(delivery)
        failure = await self._run_handler(order)
        if failure is None:
            metrics.processed.inc()
            await self._ack(message)
            return
        metrics.failed.inc()
        if isinstance(failure, PermanentFailure):
            logger.error("permanent failure, dead-lettered: %r", failure, extra=_fields(delivery))
            metrics.permanent.inc()
            await self._dead_letter(message, failure, delivery.attempt)
            return
        logger.warning("handler failed: %r", failure, exc_info=failure, extra=_fields(delivery))
        if self._retry_policy.should_retry(delivery.attempt):
            metrics.retried.inc()
            await self._retry(message, delivery.attempt)
        else:
            metrics.exhausted.inc()
            await self._dead_letter(message, failure, delivery.attempt)

    async def _run_handler(self, order: Order) -> Exception | None:
        """Run the handler within ORDERLANE_HANDLER_TIMEOUT; return what it raised (a TimeoutError if it overran),
        or None. A cancellation that is not the timeout's (a forced stop) propagates: the message stays unacked."""
        task = asyncio.current_task()
        assert task is not None
        started = time.perf_counter()
        self._deadlines.arm(task)
        failure: Exception | None = None
        try:
            await self._handler(order)
        except asyncio.CancelledError:
            if not self._deadlines.disarm(task):
                raise
            if task.uncancel() > 0:  # cancelled by a stop as well, not only by the watchdog: stay unacked
                raise
            timeout = self._settings.handler_timeout
            failure = TimeoutError(f"the handler ran longer than ORDERLANE_HANDLER_TIMEOUT={timeout:g}s")
        except Exception as exc:
            failure = exc
        finally:
            if self._deadlines.disarm(task):  # it returned or raised, swallowing the watchdog's cancellation
                task.uncancel()
            elapsed = time.perf_counter() - started
            self.metrics.handler_seconds.observe(elapsed)
            if self._handler_times is not None:
                self._handler_times.append(elapsed)
        return failure

    async def _retry(self, message: AbstractIncomingMessage, failed_attempt: int) -> None:
        delay = self._retry_policy.delay_seconds(failed_attempt, self._rng)
        copy = retry_message(message, next_attempt=failed_attempt + 1, delay_seconds=delay)
        await self._move(message, copy, self.lane.retry_queue(failed_attempt).name)

    async def _dead_letter(self, message: AbstractIncomingMessage, error: BaseException, attempts: int) -> None:
        reason = str(error) or repr(error)
        copy = dead_letter_message(message, error_type=type(error).__name__, error=reason, attempts=attempts)
        await self._move(message, copy, self._broker.topology.dead_letter.name)

    async def _move(self, message: AbstractIncomingMessage, copy: aio_pika.Message, queue: str) -> None:
        """Republish `copy` to `queue`, confirmed, then ack the original; on failure requeue the original."""
        if message.channel.is_closed:
            logger.warning("channel gone before settling; the broker redelivers it", extra=_message_fields(message))
            return
        try:
            await publish_confirmed(
                self._broker.channel, copy, queue=queue, confirm_within=self._settings.publish_timeout
            )
        except PublishError as exc:
            logger.error("could not move it to %r (%s); requeueing it", queue, exc, extra=_message_fields(message))
            await asyncio.sleep(REQUEUE_PAUSE_SECONDS)
            await self._settle_with(message.nack(requeue=True), message)
            return
        await self._ack(message)

    async def _ack(self, message: AbstractIncomingMessage) -> None:
        await self._settle_with(message.ack(), message)

    @staticmethod
    async def _settle_with(settling: Awaitable[None], message: AbstractIncomingMessage) -> None:
        try:
            await settling
        except BROKER_ERRORS as exc:
            # The channel that delivered it is gone: its tag is void and the broker redelivers the message.
            logger.warning("could not settle (%s); the broker will redeliver it", exc, extra=_message_fields(message))


def _message_fields(message: AbstractIncomingMessage) -> dict[str, object]:
    """Log fields for a message whose body may not be an order: what its properties and headers say."""
    priority = int_header(message, PRIORITY_HEADER, -1)
    return log_fields(message.message_id, priority if priority in PRIORITIES else None, attempt_of(message))


def _fields(delivery: Delivery) -> dict[str, object]:
    return log_fields(delivery.order_id, delivery.priority, delivery.attempt)


def lane_consumers(
    broker: Broker, handler: Handler, settings: Settings, *, prefetch: Prefetch, metrics: ConsumerMetrics
) -> list[Consumer]:
    """One consumer per lane, each at the lane's prefetch or else at `prefetch`, all counting into `metrics`."""
    return [
        Consumer(broker, handler, settings, lane=lane, prefetch=lane.prefetch or prefetch, metrics=metrics)
        for lane in broker.topology.lanes
    ]


async def consume_until_stopped(
    settings: Settings, handler: Handler, *, prefetch: Prefetch, metrics_port: int | None = None
) -> None:
    """Run one consumer per lane until SIGTERM or SIGINT; a second signal cancels in-flight handlers at once.

    `prefetch` applies to the lanes that do not set their own. With `metrics_port`, Prometheus metrics are
    served on it (any path), queue depths included.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    metrics = ConsumerMetrics()
    async with open_broker(settings) as broker, AsyncExitStack() as cleanup:
        consumers = lane_consumers(broker, handler, settings, prefetch=prefetch, metrics=metrics)
        if metrics_port is not None:
            server, _ = start_http_server(metrics_port, registry=metrics.registry)
            cleanup.callback(server.shutdown)
            polling = asyncio.create_task(metrics.poll_queues(broker, settings.queue_poll_seconds))
            cleanup.callback(polling.cancel)
            logger.info("metrics on port %d", metrics_port)

        def on_signal() -> None:
            if stop.is_set():
                logger.warning("second signal: not waiting for in-flight handlers")
                for consumer in consumers:
                    consumer.force()
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal)
            cleanup.callback(loop.remove_signal_handler, signum)
        for consumer in consumers:
            await consumer.start()
        logger.info("consumer ready")
        await stop.wait()
        await asyncio.gather(*(consumer.stop(settings.shutdown_timeout) for consumer in consumers))
    logger.info("consumer stopped")
