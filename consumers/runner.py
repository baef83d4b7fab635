"""The consumer process: a subscription per lane feeding one local priority queue, handler slots taking the most
urgent held delivery next, the ack policy (consumers/policy.py), and a graceful stop.

- The prefetch (per lane: how many deliveries the broker may have sent) and the concurrency (per process: how many
  handlers run at once) are separate knobs; each is a number or `auto` (consumers/tuning.py).
- Stop: the subscriptions are cancelled, held but unstarted deliveries go back to the broker at once, running
  handlers get the grace period to finish and settle; then the rest are cancelled, unacked, and redelivered.
- A handler that is an async context manager (a class that opens a database pool, say) is entered before the first
  delivery and exited after the last has settled.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from functools import partial
from typing import TYPE_CHECKING, Final

from prometheus_client import start_http_server

from broker.connection import Broker, open_broker
from broker.priority import broker_priority
from broker.settings import Concurrency, Prefetch, Settings
from broker.status_store import StatusStore, open_status_store
from consumers.delivery import Handler
from consumers.dispatcher import Dispatcher
from consumers.metrics import ConsumerMetrics
from consumers.policy import AckPolicy, message_fields, republish_confirmed
from consumers.received import Received
from consumers.status import NullRecorder, StatusRecorder, StoreRecorder
from consumers.subscription import Subscription
from consumers.threads import InThreads
from consumers.tuning import TuningPlan

if TYPE_CHECKING:
    from broker.tracing import Tracing

logger = logging.getLogger(__name__)

STOP_STEP_SECONDS: Final = 5.0

Held = tuple[Received, int]
"""A delivery and the index of its lane."""


class Consumer:
    """Consumes every lane of the topology in one process, through one dispatcher."""

    def __init__(
        self,
        broker: Broker,
        handler: Handler,
        settings: Settings,
        *,
        prefetch: Prefetch | None = None,
        concurrency: Concurrency | None = None,
        metrics: ConsumerMetrics | None = None,
        status: StatusStore | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        prefetch = prefetch or settings.prefetch
        concurrency = concurrency or settings.concurrency
        self.metrics = metrics or ConsumerMetrics()
        self._status: StatusRecorder = StoreRecorder(status, self.metrics) if status is not None else NullRecorder()
        lanes = broker.topology.lanes
        self._plan = TuningPlan.of(lanes, prefetch, concurrency)
        self._dispatcher: Dispatcher[Held] = Dispatcher(
            self._process,
            self._plan.slots,
            reserved=settings.vip_slots,
            reserved_urgency=broker_priority(settings.vip_priority, max_priority=settings.max_priority),
        )
        self.subscriptions = [
            Subscription(settings, lane, planned.depth, partial(self._hold, index))
            for index, (lane, planned) in enumerate(zip(lanes, self._plan.lanes, strict=True))
        ]
        self._tuner = self._plan.tuner(self, self._dispatcher, self.subscriptions)
        self._policy = AckPolicy(
            republish_confirmed(broker, settings),
            broker.topology.dead_letter.name,
            handler,
            settings,
            self.metrics,
            self._status,
            tracing=tracing,
            on_handler_time=self._tuner.handler_time if self._tuner is not None else None,
        )
        self._forced = asyncio.Event()
        self.metrics.track(self)

    @property
    def concurrency(self) -> int:
        return self._dispatcher.concurrency

    @property
    def in_flight(self) -> int:
        """Deliveries whose handler is running (or settling)."""
        return self._dispatcher.running

    @property
    def held(self) -> int:
        """Deliveries received and waiting for a free slot."""
        return self._dispatcher.held

    @property
    def settling(self) -> int:
        """Deliveries whose handler is done and whose ack waits for the status store's answer."""
        return self._status.settling

    @property
    def queues(self) -> list[str]:
        return [subscription.lane.work.name for subscription in self.subscriptions]

    @property
    def depths(self) -> list[int]:
        return [subscription.depth for subscription in self.subscriptions]

    async def start(self) -> None:
        self._policy.deadlines.start()
        self._dispatcher.start()
        for subscription in self.subscriptions:
            await subscription.start()
        if self._tuner is not None:
            self._tuner.start()
        for subscription, planned in zip(self.subscriptions, self._plan.lanes, strict=True):
            logger.info("consuming queue %r, prefetch %s", subscription.lane.work.name, planned.prefetch)
        logger.info("concurrency %s", self._plan.concurrency)

    def _hold(self, lane: int, message: Received) -> None:
        self._plan.lanes[lane].counters.received()
        self._dispatcher.hold((message, lane), message.priority or 0)

    async def _process(self, held: Held, held_seconds: float) -> None:
        message, lane = held
        counters = self._plan.lanes[lane].counters
        if message.channel_is_closed:
            # Delivered on a connection lost since: its tag is void and the broker has redelivered the order.
            counters.dropped()
            return
        counters.started()
        try:
            await self._policy.process(message, self.subscriptions[lane].lane, held_seconds)
        except Exception:  # the ack policy settles every outcome; anything else is a bug, which must not lose it
            logger.exception("unexpected error while processing; requeueing it", extra=message_fields(message))
            if not message.settled:
                message.requeue()

    async def stop(self, grace_seconds: float) -> None:
        """Stop taking messages and give back what is held but unstarted; let running handlers finish and settle
        for up to `grace_seconds` (or until `force()`), then cancel the rest: unacked, so the broker redelivers."""
        if self._tuner is not None:
            await self._bounded(self._tuner.stop(), "the automatic tuning")
        for subscription in self.subscriptions:
            await self._bounded(subscription.stop(), f"the subscription to {subscription.lane.work.name!r}")
        released = self._dispatcher.release()
        for message, _ in released:
            message.requeue()  # held but unstarted: back to the broker, at its priority
        logger.info("stopping: gave %d held orders back to the broker", len(released))
        logger.info("stopping: waiting up to %.0fs for %d in-flight orders", grace_seconds, self.in_flight)
        finished = asyncio.create_task(self._dispatcher.wait_finished())
        forced = asyncio.create_task(self._forced.wait())
        try:
            await asyncio.wait((finished, forced), timeout=grace_seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            forced.cancel()
        if self.in_flight:
            logger.warning("cancelling %d handlers still running", self.in_flight)
        self._dispatcher.cancel()
        await self._bounded(asyncio.shield(finished), "handlers that ignore their cancellation")
        await self._policy.deadlines.close()
        await self._bounded(self._status.settled(), "the status store's answers")  # the acks of processed orders wait
        for subscription in self.subscriptions:
            await subscription.close()  # anything still unacked goes back to the queue now
        await self._bounded(self._status.close(), "the status store")

    async def _bounded(self, step: Awaitable[None], what: str) -> None:
        """A step of the stop that waits on the broker or on handlers: it must not hold the stop for ever (a
        broker that is away, a handler that swallows its cancellation)."""
        try:
            async with asyncio.timeout(STOP_STEP_SECONDS):
                await step
        except TimeoutError:
            logger.warning("stopping: gave up waiting for %s after %.0fs", what, STOP_STEP_SECONDS)

    def force(self) -> None:
        """Make a pending or later `stop()` cancel in-flight handlers at once."""
        self._forced.set()


async def consume_until_stopped(
    settings: Settings,
    handler: Handler,
    *,
    prefetch: Prefetch,
    concurrency: Concurrency,
    metrics_port: int | None = None,
    tracing: Tracing | None = None,
) -> None:
    """Consume every lane until SIGTERM or SIGINT; a second signal cancels in-flight handlers at once.

    `prefetch` applies to the lanes that do not set their own. With `metrics_port`, Prometheus metrics are
    served on it (any path), queue depths included.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    metrics = ConsumerMetrics()
    async with (
        open_status_store(settings, metrics.registry) as status,
        open_broker(settings) as broker,
        AsyncExitStack() as cleanup,
    ):
        consumer = Consumer(
            broker,
            handler,
            settings,
            prefetch=prefetch,
            concurrency=concurrency,
            metrics=metrics,
            status=status,
            tracing=tracing,
        )
        if metrics_port is not None:
            server, _ = start_http_server(metrics_port, registry=metrics.registry)
            cleanup.callback(server.shutdown)
            polling = asyncio.create_task(metrics.poll_queues(broker, settings.queue_poll_seconds))
            cleanup.callback(polling.cancel)
            logger.info("metrics on port %d", metrics_port)

        def on_signal() -> None:
            if stop.is_set():
                logger.warning("second signal: not waiting for in-flight handlers")
                consumer.force()
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal)
            cleanup.callback(loop.remove_signal_handler, signum)
        await enter_handler(handler, cleanup)  # exited when `cleanup` is, after the stop below
        await consumer.start()
        gc.freeze()  # what start-up made lives as long as the process: no full collection walks it again
        logger.info("consumer ready")
        await stop.wait()
        await consumer.stop(settings.shutdown_timeout)
    logger.info("consumer stopped")


async def enter_handler(handler: Handler, stack: AsyncExitStack) -> None:
    """Enter a handler that is an async context manager (it has `__aenter__` and `__aexit__`; a plain one run in
    threads too) on `stack`, which exits it: its resources, a database pool say, open in the consumer's event loop
    before the first delivery and close after the last."""
    loaded = handler.function if isinstance(handler, InThreads) else handler
    if isinstance(loaded, AbstractAsyncContextManager):
        await stack.enter_async_context(loaded)
        logger.info("the handler entered: it is exited at the stop, after the last delivery has settled")
