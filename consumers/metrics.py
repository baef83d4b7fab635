"""The consumer's Prometheus metrics: what it did with each order, how long orders waited, and the backlog."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from broker.connection import Broker
from broker.headers import published_at_of
from broker.priority import PRIORITIES
from broker.queues import queue_stats
from consumers.received import Headed

logger = logging.getLogger(__name__)

WAIT_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
HANDLER_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class TrackedConsumer(Protocol):
    @property
    def in_flight(self) -> int: ...
    @property
    def held(self) -> int: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def queues(self) -> Sequence[str]: ...
    @property
    def depths(self) -> Sequence[int]: ...


class PriorityMetrics:
    """The per-priority children of the consumer's metrics, for one level."""

    def __init__(self, metrics: ConsumerMetrics, priority: str) -> None:
        self.processed = metrics.processed.labels(priority=priority)
        self.failed = metrics.failed.labels(priority=priority)
        self.retried = metrics.retried.labels(priority=priority)
        self.wait_seconds = metrics.wait_seconds.labels(priority=priority)
        self.held_seconds = metrics.held_seconds.labels(priority=priority)
        self.exhausted = metrics.dead_lettered.labels(priority=priority, reason="exhausted")
        self.permanent = metrics.dead_lettered.labels(priority=priority, reason="permanent")
        self.expired = metrics.expired.labels(priority=priority)
        self.expired_dead_letters = metrics.dead_lettered.labels(priority=priority, reason="expired")


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        by_priority = ["priority"]
        self.processed = Counter(
            "orderlane_orders_processed", "Orders whose handler returned", by_priority, registry=self.registry
        )
        self.failed = Counter(
            "orderlane_orders_failed", "Handler runs that raised or timed out", by_priority, registry=self.registry
        )
        self.retried = Counter(
            "orderlane_orders_retried",
            "Orders sent to a delay queue for another attempt",
            by_priority,
            registry=self.registry,
        )
        self.dead_lettered = Counter(
            "orderlane_orders_dead_lettered",
            "Messages moved to the dead-letter queue (reason: invalid, permanent, exhausted, expired)",
            ["priority", "reason"],
            registry=self.registry,
        )
        self.expired = Counter(
            "orderlane_orders_expired",
            "Orders not processed because their deadline came before their handler could start (taken too late, or "
            "a retry due after it): dead-lettered, status expired",
            by_priority,
            registry=self.registry,
        )
        self.already_processed = Counter(
            "orderlane_orders_already_processed",
            "Deliveries of orders the status store knew as processed: acked without running the handler",
            registry=self.registry,
        )
        self.status_held_back = Gauge(
            "orderlane_status_writes_held_back",
            "Status transitions not written yet because the status store was away",
            registry=self.registry,
        )
        self.status_dropped = Counter(
            "orderlane_status_writes_dropped",
            "Status transitions given up (too many held back, or the process stopped while the store was away)",
            registry=self.registry,
        )
        self.handler_seconds = Histogram(
            "orderlane_handler_seconds", "Handler run time", buckets=HANDLER_BUCKETS, registry=self.registry
        )
        self.in_flight = Gauge("orderlane_orders_in_flight", "Deliveries being handled now", registry=self.registry)
        self.held = Gauge(
            "orderlane_orders_held",
            "Deliveries received and waiting in the consumer for a free handler slot",
            registry=self.registry,
        )
        self.held_seconds = Histogram(
            "orderlane_order_held_seconds",
            "From the delivery to the handler's start, per effective priority: the wait inside the consumer",
            by_priority,
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.concurrency = Gauge(
            "orderlane_consumer_concurrency", "Handler slots of the consumer process", registry=self.registry
        )
        self.prefetch = Gauge(
            "orderlane_consumer_prefetch",
            "Prefetch (deliveries in the consumer at most) per queue",
            ["queue"],
            registry=self.registry,
        )
        self.wait_seconds = Histogram(
            "orderlane_order_wait_seconds",
            "From the API's publish to the handler's start, per effective priority: the number that shows "
            "priority works",
            by_priority,
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.queue_messages = Gauge(
            "orderlane_queue_messages", "Ready messages per queue (polled)", ["queue"], registry=self.registry
        )
        self.queue_consumers = Gauge(
            "orderlane_queue_consumers", "Consumers per queue (polled)", ["queue"], registry=self.registry
        )

        self.for_priority = {level: PriorityMetrics(self, str(level)) for level in PRIORITIES}

    def track(self, consumer: TrackedConsumer) -> None:
        """Read the consumer's gauges when scraped: nothing to update per message."""
        self.in_flight.set_function(lambda: consumer.in_flight)
        self.held.set_function(lambda: consumer.held)
        self.concurrency.set_function(lambda: consumer.concurrency)
        for index, queue in enumerate(consumer.queues):

            def depth(index: int = index) -> int:
                return consumer.depths[index]

            self.prefetch.labels(queue=queue).set_function(depth)

    def of(self, priority: int) -> PriorityMetrics:
        """The children for one priority level, bound once: `labels()` on every message costs a lock and a lookup."""
        found = self.for_priority.get(priority)
        return found if found is not None else PriorityMetrics(self, str(priority))

    def observe_wait(self, message: Headed, metrics: PriorityMetrics) -> None:
        published_at = published_at_of(message.headers)
        if published_at is not None:
            metrics.wait_seconds.observe(max(0.0, time.time() - published_at))

    async def poll_queues(self, broker: Broker, every_seconds: float) -> None:
        """Refresh the queue gauges with passive declares until cancelled."""
        while True:
            try:
                for stats in await queue_stats(broker.connection, broker.topology):
                    self.queue_messages.labels(queue=stats.queue).set(stats.messages or 0)
                    self.queue_consumers.labels(queue=stats.queue).set(stats.consumers or 0)
            # The gauges must outlive any outage; while it reconnects, aio-pika raises even RuntimeError.
            except Exception as exc:
                logger.warning("could not poll the queue depths: %r", exc)
            await asyncio.sleep(every_seconds)
