"""One lane's subscription: a channel of its own whose QoS is the lane's depth (prefetch), feeding the dispatcher."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel, ConsumerTag

from broker.connection import BROKER_ERRORS, Broker
from broker.topology import Lane, declare_queue
from consumers.settling import settle_with

logger = logging.getLogger(__name__)

Deliver = Callable[[AbstractIncomingMessage, "Subscription"], None]


class Subscription:
    """Takes the lane's work queue with at most `depth` unsettled deliveries and passes each to `deliver`.

    `outstanding` counts the deliveries received and not yet settled (held or running), `running` those whose
    handler started; the process calls `took()` when a slot takes one and `settled()` after it. Once `stop()`
    began, a delivery still arriving goes straight back to the broker.
    """

    def __init__(self, broker: Broker, lane: Lane, depth: int, deliver: Deliver) -> None:
        self._broker = broker
        self.lane = lane
        self.depth = depth
        self._deliver = deliver
        self.outstanding = 0
        self.running = 0
        self.low_water = 0
        """The fewest deliveries of this lane held unstarted when a slot took one (since `take_low_water()`)."""
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: ConsumerTag | None = None
        self._stopping = False
        self._resubscribing = asyncio.Lock()

    async def start(self) -> None:
        if self._channel is not None:
            raise RuntimeError("subscription already started")
        self._channel = await self._broker.connection.channel(publisher_confirms=False)
        await self._channel.set_qos(prefetch_count=self.depth)
        # Declared (not just looked up) on this channel, so that the robust channel restores the consumer too.
        self._queue = await declare_queue(self._channel, self.lane.work)
        self._tag = await self._queue.consume(self._on_message)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._stopping:
            await settle_with(message.nack(requeue=True), message)
            return
        self.outstanding += 1
        self._deliver(message, self)

    def took(self) -> None:
        held_after = self.outstanding - self.running - 1
        if held_after < self.low_water:
            self.low_water = held_after
        self.running += 1

    def settled(self) -> None:
        self.running -= 1
        self.outstanding -= 1

    def take_low_water(self) -> int:
        low_water, self.low_water = self.low_water, self.outstanding - self.running
        return low_water

    async def ready_at_broker(self) -> int:
        """Orders ready in the lane's queue at the broker (a declare with the same arguments: no side effects)."""
        if self._queue is None or self._channel is None or self._channel.is_closed:
            return 0
        try:
            declared = await self._queue.declare()
        except BROKER_ERRORS:
            return 0
        return declared.message_count or 0

    async def set_depth(self, depth: int) -> None:
        """RabbitMQ fixes a consumer's prefetch when it subscribes (per-consumer QoS), so a new depth means a new
        subscription: subscribe again under the new QoS, then cancel the old one. The deliveries the old one
        holds stay ackable on this channel; for a moment both hold some."""
        async with self._resubscribing:
            if self._stopping or self._channel is None or self._channel.is_closed or self._queue is None:
                return
            old_tag = self._tag
            try:
                await self._channel.set_qos(prefetch_count=depth)
                self._tag = await self._queue.consume(self._on_message)
                if old_tag is not None:
                    await self._queue.cancel(old_tag)
            except BROKER_ERRORS as exc:
                logger.warning("could not change the prefetch of %r to %d: %s", self.lane.work.name, depth, exc)
                return
            self.depth = depth

    async def stop(self) -> None:
        """Cancel the subscription: the broker sends nothing more; what still arrives is given back at once."""
        async with self._resubscribing:  # let a change of depth under way finish; later ones see _stopping
            self._stopping = True
        if self._tag is not None and self._queue is not None:
            try:
                await self._queue.cancel(self._tag)
            except BROKER_ERRORS as exc:
                logger.warning("could not cancel the consumer of %r cleanly: %s", self.lane.work.name, exc)
            self._tag = None

    async def give_back(self, message: AbstractIncomingMessage) -> None:
        """Return a held, unstarted delivery to the broker (requeued at its priority)."""
        await settle_with(message.nack(requeue=True), message)
        self.outstanding -= 1

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()  # anything still unacked goes back to the queue now
