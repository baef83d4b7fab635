"""An in-memory broker for tests in one process (consumers/testing.py): orderlane's topology, kept by its rules.

It publishes as the API does (broker.publisher.Publisher: the same message properties, the lane's work queue) and
delivers as RabbitMQ and the consumer's dispatcher do: the highest broker priority first, first in, first out
within one, across the lanes. A copy republished to a delay queue comes back to the queue that delay queue
dead-letters to once its per-message TTL (`expiration`) has passed, as a new message (not redelivered); one
republished to the dead-letter queue is kept there. What it does not have: confirms that can fail, connections that
drop, redelivery after a crash, prefetch windows, quorum queues' lack of priorities.
"""

from __future__ import annotations

import asyncio
import copy
import heapq
import itertools
from collections import deque

from pamqp.commands import Basic
from pamqp.common import FieldTable

from broker.errors import PublishError
from broker.messages import OrderBase, encode_order
from broker.priority import prioritize
from broker.properties import PropertiesView
from broker.publisher import Receipt, message_properties
from broker.settings import Settings
from broker.topology import build_topology


class MemoryMessage(PropertiesView):
    """A message in a work queue, or delivered from one: what a consumer's delivery offers the ack policy."""

    __slots__ = ("_broker", "_properties", "_settled", "body", "queue", "redelivered", "sequence")

    def __init__(
        self,
        broker: MemoryBroker,
        queue: str,
        body: bytes,
        properties: Basic.Properties,
        sequence: int,
        *,
        redelivered: bool = False,
    ) -> None:
        self._broker = broker
        self.queue = queue
        self.body = body
        self._properties = properties
        self.sequence = sequence
        """Its place in its priority level: first in, first out."""
        self.redelivered = redelivered
        self._settled = False

    @property
    def headers(self) -> FieldTable:
        return self._properties.headers or {}

    @property
    def channel_is_closed(self) -> bool:
        return False

    @property
    def properties(self) -> Basic.Properties:
        return self._properties

    def ack(self) -> None:
        self._broker.settle(self, requeue=False)

    def requeue(self) -> None:
        self._broker.settle(self, requeue=True)

    def settled_before(self) -> bool:
        """True, and from now on, once it was acked or requeued: a second settle is a bug the broker punishes."""
        settled, self._settled = self._settled, True
        return settled


class MemoryBroker:
    """Work queues, delay queues and the dead-letter queue of `settings`' topology, in this process."""

    def __init__(self, settings: Settings) -> None:
        self.topology = build_topology(settings)
        self._vip_priority = settings.vip_priority
        self._max_priority = settings.max_priority
        self._work_queues = {lane.work.name for lane in self.topology.lanes}
        self._delays = {
            spec.name: str(spec.arguments["x-dead-letter-routing-key"])
            for lane in self.topology.lanes
            for spec in lane.retries
        }
        """Each delay queue, and the work queue its expired messages go back to."""
        self.published: list[OrderBase] = []
        """Every order published (by the API's intake), in order; not the copies of retries."""
        self._ready: list[tuple[int, int, MemoryMessage]] = []
        """(-broker priority, sequence, message): a heap whose first entry is the next to deliver."""
        self._sequence = itertools.count()
        self._takers: deque[asyncio.Future[None]] = deque()
        self._timers: set[asyncio.TimerHandle] = set()
        self.outstanding = 0
        """Messages ready, delivered but unsettled, or waiting out a delay."""
        self._settled = asyncio.Event()
        self._settled.set()

    @property
    def is_ready(self) -> bool:
        return True

    @property
    def is_blocked(self) -> bool:
        return False

    async def publish(self, order: OrderBase, *, check_processed: bool = False) -> Receipt:
        """As broker.publisher.OrderPublisher publishes: to its lane's work queue, with its priority."""
        priority = prioritize(order, vip_priority=self._vip_priority, max_priority=self._max_priority)
        queue = self.topology.lane_for(priority.effective).work.name
        properties = message_properties(order, priority, check_processed=check_processed)
        self._enter(queue, encode_order(order), properties)
        self.published.append(order)
        return Receipt(order_id=order.order_id, priority=priority, queue=queue)

    async def republish(self, body: bytes, properties: Basic.Properties, queue: str) -> None:
        """The ack policy's move (consumers.policy.Republish): to a work queue, a delay queue or the DLQ."""
        if queue in self._work_queues:
            self._enter(queue, body, properties)
        elif queue in self._delays:
            self._delay(self._delays[queue], body, properties)
        elif queue != self.topology.dead_letter.name:  # as a mandatory publish to a missing queue is returned
            raise PublishError(f"no queue {queue!r} in the topology: the message was returned")
        # A dead letter stays where it is: the harness lists the ack policy's decisions (OrderlaneHarness.dead_letters).

    async def take(self) -> MemoryMessage:
        """The next message to deliver, once there is one: the most urgent, the oldest of its level."""
        while not self._ready:
            waiter = asyncio.get_running_loop().create_future()
            self._takers.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._takers:
                    self._takers.remove(waiter)
        return heapq.heappop(self._ready)[2]

    def settle(self, message: MemoryMessage, *, requeue: bool) -> None:
        """A delivery acked (done with), or requeued: back to its place in its queue, to be delivered again. Settling
        one twice raises, as RabbitMQ closes the channel for it (PRECONDITION_FAILED, unknown delivery tag)."""
        if message.settled_before():
            raise RuntimeError(f"message {message.message_id!r} was settled twice: the broker would close the channel")
        if requeue:
            self._hold(
                MemoryMessage(self, message.queue, message.body, message.properties, message.sequence, redelivered=True)
            )
        else:
            self._count(-1)

    async def settled(self) -> None:
        """Wait until no message is ready, delivered and unsettled, or delayed."""
        await self._settled.wait()

    def close(self) -> None:
        """Drop the delayed messages: nothing comes back after the test."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def _enter(self, queue: str, body: bytes, properties: Basic.Properties) -> None:
        self._count(+1)
        self._hold(MemoryMessage(self, queue, body, properties, next(self._sequence)))

    def _hold(self, message: MemoryMessage) -> None:
        """Into the ready heap; a message without a priority counts as 0, one above the maximum as the maximum."""
        priority = min(message.priority or 0, self._max_priority)
        heapq.heappush(self._ready, (-priority, message.sequence, message))
        while self._takers:
            waiter = self._takers.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _delay(self, queue: str, body: bytes, properties: Basic.Properties) -> None:
        """Into `queue` once the copy's per-message TTL has passed, without it (as RabbitMQ dead-letters an expired
        message: its expiration removed, so it does not expire again)."""

        def expire() -> None:
            self._timers.discard(timer)
            expired = copy.copy(properties)
            expired.expiration = None
            self._enter(queue, body, expired)
            self._count(-1)

        self._count(+1)
        timer = asyncio.get_running_loop().call_later(float(properties.expiration or 0) / 1000, expire)
        self._timers.add(timer)

    def _count(self, change: int) -> None:
        self.outstanding += change
        if self.outstanding:
            self._settled.clear()
        else:
            self._settled.set()
