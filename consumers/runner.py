"""The consumer: takes orders from the work queue, runs the handler, and settles each message once.

The ack policy lives in `Consumer._settle` and nowhere else:
- the handler returned                → ack
- the body is not a valid order       → reject without requeue: the queue dead-letters it to `<queue>.dlq`
- the handler raised                  → reject without requeue: dead-lettered, never lost, never looping
- the task was cancelled (forced stop) → nothing: the broker redelivers it when the channel closes
"""

from __future__ import annotations

import asyncio
import logging
import signal

import aiormq.exceptions
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, ConsumerTag
from pydantic import ValidationError

from broker.connection import open_broker
from broker.errors import InvalidMessage
from broker.messages import Order, decode_order
from broker.publisher import ATTEMPT_HEADER, CONTENT_TYPE, PRIORITY_HEADER
from broker.settings import Settings
from consumers.delivery import Delivery, Handler, delivering

logger = logging.getLogger(__name__)

_SETTLE_ERRORS = (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, ConnectionError)


def parse_order(message: AbstractIncomingMessage, *, max_body_bytes: int) -> Order:
    """Treat the body as untrusted: bounded size, JSON only, a valid order."""
    if len(message.body) > max_body_bytes:
        raise InvalidMessage(f"body of {len(message.body)} bytes exceeds {max_body_bytes}")
    if message.content_type not in (None, CONTENT_TYPE):
        raise InvalidMessage(f"content type {message.content_type!r} is not {CONTENT_TYPE}")
    try:
        return decode_order(message.body)
    except ValidationError as exc:
        raise InvalidMessage(f"not a valid order: {exc.error_count()} errors, first: {exc.errors()[0]['msg']}") from exc


def _int_header(message: AbstractIncomingMessage, name: str, default: int) -> int:
    value = message.headers.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def describe(message: AbstractIncomingMessage, order: Order) -> Delivery:
    return Delivery(
        order_id=order.order_id,
        priority=_int_header(message, PRIORITY_HEADER, order.priority),
        attempt=_int_header(message, ATTEMPT_HEADER, 1),
        redelivered=bool(message.redelivered),
    )


class Consumer:
    """Consumes one queue; every delivery runs in its own task, so `prefetch` is also the handler concurrency."""

    def __init__(self, queue: AbstractQueue, handler: Handler, *, max_body_bytes: int) -> None:
        self._queue = queue
        self._handler = handler
        self._max_body_bytes = max_body_bytes
        self._tag: ConsumerTag | None = None
        self._in_flight: set[asyncio.Task[object]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._forced = asyncio.Event()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def start(self) -> None:
        if self._tag is not None:
            raise RuntimeError("consumer already started")
        self._tag = await self._queue.consume(self._on_message)
        logger.info("consuming queue %r", self._queue.name)

    async def stop(self, grace_seconds: float) -> None:
        """Stop taking messages, let in-flight handlers finish and settle for up to `grace_seconds` (or until
        `force()`), then cancel the rest: unacked, so the broker redelivers them."""
        if self._tag is not None:
            try:
                await self._queue.cancel(self._tag)
            except _SETTLE_ERRORS as exc:
                logger.warning("could not cancel the consumer cleanly: %s", exc)
            self._tag = None
        waiters = [asyncio.create_task(self._idle.wait()), asyncio.create_task(self._forced.wait())]
        try:
            await asyncio.wait(waiters, timeout=grace_seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if self._in_flight:
            logger.warning("cancelling %d handlers still running", self.in_flight)
            await self._abort()

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
        try:
            await self._settle(message)
        finally:
            self._in_flight.discard(task)
            if not self._in_flight:
                self._idle.set()

    async def _settle(self, message: AbstractIncomingMessage) -> None:
        try:
            order = parse_order(message, max_body_bytes=self._max_body_bytes)
        except InvalidMessage as exc:
            logger.error("dead-lettering invalid message message_id=%s: %s", message.message_id, exc)
            await self._finish(message, ack=False)
            return
        delivery = describe(message, order)
        try:
            with delivering(delivery):
                await self._handler(order)
        except Exception:
            logger.exception(
                "handler failed; dead-lettering order_id=%s priority=%d attempt=%d",
                delivery.order_id,
                delivery.priority,
                delivery.attempt,
            )
            await self._finish(message, ack=False)
        else:
            await self._finish(message, ack=True)

    async def _finish(self, message: AbstractIncomingMessage, *, ack: bool) -> None:
        try:
            if ack:
                await message.ack()
            else:
                await message.reject(requeue=False)
        except _SETTLE_ERRORS as exc:
            # The channel that delivered it is gone: its tag is void and the broker redelivers the message.
            logger.warning("could not settle message_id=%s (%s); the broker will redeliver it", message.message_id, exc)


async def consume_until_stopped(settings: Settings, handler: Handler, *, prefetch: int) -> None:
    """Run one consumer until SIGTERM or SIGINT; a second signal cancels in-flight handlers at once."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    async with open_broker(settings) as broker:
        await broker.channel.set_qos(prefetch_count=prefetch)
        consumer = Consumer(broker.work_queue, handler, max_body_bytes=settings.max_body_bytes)

        def on_signal() -> None:
            if stop.is_set():
                logger.warning("second signal: not waiting for %d in-flight handlers", consumer.in_flight)
                consumer.force()
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal)
        try:
            await consumer.start()
            logger.info("consumer ready, prefetch %d", prefetch)
            await stop.wait()
            grace = settings.shutdown_timeout
            logger.info("stopping: waiting up to %.0fs for %d in-flight orders", grace, consumer.in_flight)
            await consumer.stop(grace)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
    logger.info("consumer stopped")
