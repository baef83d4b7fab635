"""One lane's subscription: a connection and channel of its own whose QoS is the lane's depth (prefetch), feeding
the dispatcher.

A connection of its own because a connection is one TCP stream: a VIP order delivered on the high lane would
otherwise queue in the broker's writer and in the socket behind every delivery of the default lane already on
its way (measured in docs/benchmarks.md: the VIP wait with lanes fell from tens of milliseconds to a few).

The channel is aio-pika's robust channel: after a reconnect it comes back with its QoS and the lane's queue
declared again. The consumer itself is registered on aiormq's channel underneath (consumers/received.py says
why), so this module subscribes again itself: after every reopen of the channel, and after the broker cancelled
the subscription (the queue was deleted, say), retrying until it holds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Final

from aio_pika.abc import AbstractQueue, AbstractRobustChannel, AbstractRobustConnection
from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp.commands import Basic

from broker.connection import BROKER_ERRORS, connect
from broker.settings import Settings
from broker.topology import Lane, declare_queue
from consumers.acks import Acks
from consumers.received import Received

logger = logging.getLogger(__name__)

RESUBSCRIBE_INTERVAL: Final = 1.0

Deliver = Callable[[Received], None]


class Subscription:
    """Takes the lane's work queue with at most `depth` unsettled deliveries and passes each to `deliver`. Once
    `stop()` began, a delivery still arriving goes straight back to the broker."""

    def __init__(self, settings: Settings, lane: Lane, depth: int, deliver: Deliver) -> None:
        self._settings = settings
        self.lane = lane
        self.depth = depth
        self._deliver = deliver
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consuming: tuple[AbstractChannel, str] | None = None
        """The aiormq channel and consumer tag of the subscription in force."""
        self._acks: Acks | None = None
        """Settles the deliveries of the aiormq channel in use."""
        self._stopping = False
        self._resubscribing = asyncio.Lock()
        self._recovery: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._connection is not None:
            raise RuntimeError("subscription already started")
        self._connection = await connect(self._settings, name=f"orderlane consumer {self.lane.work.name}")
        self._channel = await self._connection.channel(publisher_confirms=False)
        await self._channel.set_qos(prefetch_count=self.depth)
        self._queue = await declare_queue(self._channel, self.lane.work)
        self._channel.reopen_callbacks.add(self._on_reopen)
        async with self._resubscribing:
            await self._subscribe()

    async def _subscribe(self) -> None:
        """Consume under the channel's current QoS; the caller holds `_resubscribing`."""
        assert self._channel is not None
        channel = await self._channel.get_underlay_channel()
        channel.on_consumer_cancel_callbacks.add(self._on_broker_cancel)
        if self._acks is None or self._acks.channel is not channel:
            self._acks = Acks(channel)
        consumed = await channel.basic_consume(self.lane.work.name, self._on_delivered)
        assert consumed.consumer_tag is not None
        self._consuming = (channel, consumed.consumer_tag)

    def _on_delivered(self, delivered: DeliveredMessage) -> Coroutine[None, None, None]:
        """Called by aiormq's channel reader as it reads the delivery: taken at once, and the coroutine aiormq runs
        as a task of its own (for every delivery) has nothing left to do. Were the work in that task, each delivery
        would first wait for a turn of the event loop, a long one on a busy consumer."""
        acks = self._acks
        if acks is None or acks.channel is not delivered.channel:
            return _taken()  # sent on a channel lost since: its tag is void, and the broker delivers the order again
        try:
            received = Received(delivered, acks)
            if self._stopping:
                received.requeue()
            else:
                self._deliver(received)
        except Exception:  # a bug: logged as aiormq logs a failed consumer task, and the channel stays open
            logger.exception("could not take a delivery from %r", self.lane.work.name)
        return _taken()

    def _on_reopen(self, _: object) -> None:
        """The robust channel is back after a reconnect, with its QoS and the queue; the subscription is not."""
        self._consuming = None
        self._resubscribe_soon(0.0)

    def _on_broker_cancel(self, frame: Basic.Cancel) -> None:
        if self._consuming is not None and frame.consumer_tag == self._consuming[1]:
            logger.warning("the broker cancelled the subscription to %r; subscribing again", self.lane.work.name)
            self._consuming = None
            self._resubscribe_soon(RESUBSCRIBE_INTERVAL)

    def _resubscribe_soon(self, delay: float) -> None:
        if not self._stopping and self._recovery is None:
            self._recovery = asyncio.get_running_loop().create_task(self._resubscribe(delay))

    async def _resubscribe(self, delay: float) -> None:
        try:
            while True:
                await asyncio.sleep(delay)
                async with self._resubscribing:
                    if self._stopping or (self._consuming is not None and not self._consuming[0].is_closed):
                        return  # stopping, or subscribed again meanwhile (by a change of depth)
                    try:
                        assert self._queue is not None
                        await self._queue.declare()  # it may have been deleted: as the robust channel would
                        await self._subscribe()
                    except BROKER_ERRORS as exc:
                        logger.warning("could not subscribe to %r again (%s); retrying", self.lane.work.name, exc)
                    else:
                        return
                delay = RESUBSCRIBE_INTERVAL
        finally:
            self._recovery = None

    async def ready_at_broker(self) -> int:
        """Orders ready in the lane's queue at the broker: a declare with the same arguments, which changes
        nothing (or declares the queue again if it was deleted, as the robust channel would)."""
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
            if self._stopping or self._channel is None or self._channel.is_closed or self._consuming is None:
                return
            channel, old_tag = self._consuming
            try:
                await self._channel.set_qos(prefetch_count=depth)
                if await self._channel.get_underlay_channel() is not channel:
                    self.depth = depth  # reopened meanwhile: the subscription made after the reopen takes it
                    return
                await self._subscribe()
                await channel.basic_cancel(old_tag)
            except BROKER_ERRORS as exc:
                logger.warning("could not change the prefetch of %r to %d: %s", self.lane.work.name, depth, exc)
                return
            self.depth = depth

    async def stop(self) -> None:
        """Cancel the subscription: the broker sends nothing more; what still arrives is given back at once."""
        async with self._resubscribing:  # let a change under way finish; later ones see _stopping
            self._stopping = True
        if self._recovery is not None:
            self._recovery.cancel()
        if self._consuming is not None:
            channel, tag = self._consuming
            self._consuming = None
            try:
                await channel.basic_cancel(tag)
            except BROKER_ERRORS as exc:
                logger.warning("could not cancel the consumer of %r cleanly: %s", self.lane.work.name, exc)

    async def close(self) -> None:
        if self._acks is not None:
            await self._acks.drain()
        if self._connection is not None:
            await self._connection.close()  # anything still unacked goes back to the queue now


async def _taken() -> None:
    """What aiormq runs for a delivery the subscription has taken already."""
