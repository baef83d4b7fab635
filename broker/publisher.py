"""Publishing orders: persistent, mandatory, broker-confirmed, bounded in time."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

import aio_pika
import aiormq
import aiormq.exceptions
from aio_pika.abc import AbstractRobustChannel
from aiormq import spec

from broker.connection import BROKER_ERRORS, Broker
from broker.errors import PublishBlocked, PublishError
from broker.headers import published_headers
from broker.messages import CONTENT_TYPE, OrderBase, encode_order
from broker.priority import Priority, prioritize
from broker.settings import Settings

if TYPE_CHECKING:
    from broker.tracing import Tracing

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the broker confirmed: the order is stored, persistent, in `queue`."""

    order_id: str
    priority: Priority
    queue: str
    expected_start: datetime | None = None
    """When its handler is expected to start, estimated at intake from the backlog ahead of it and the consumers'
    drain rate (broker/estimates.py); None when there is no estimate (no status store, or not measured yet)."""


class Publisher(Protocol):
    @property
    def is_ready(self) -> bool:
        """True while a publish can reach the broker."""
        ...

    @property
    def is_blocked(self) -> bool:
        """True while the broker blocks publishing (a memory or disk alarm): `publish` raises PublishBlocked."""
        ...

    async def publish(self, order: OrderBase, *, check_processed: bool = False) -> Receipt:
        """Return only once the broker confirmed the persistent message; raise PublishError otherwise.
        `check_processed`: another copy of it may have been stored (broker.headers.CHECK_PROCESSED_HEADER)."""
        ...


def message_properties(
    order: OrderBase, priority: Priority, *, check_processed: bool = False, trace: Mapping[str, str] | None = None
) -> spec.Basic.Properties:
    """The AMQP properties of an order's message: persistent, its broker priority, its id, when it was published,
    and its headers (broker/headers.py); with `trace`, the headers that carry its trace (broker/tracing.py)."""
    now_us = time.time_ns() // 1_000
    headers = published_headers(priority.effective, now_us, check_processed=check_processed, trace=trace)
    return spec.Basic.Properties(
        content_type=CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT.value,
        message_id=order.order_id,
        priority=priority.broker,
        timestamp=datetime.fromtimestamp(now_us // 1_000_000, UTC),
        headers=headers,  # type: ignore[arg-type]  # pamqp's FieldTable is invariant
    )


def build_message(order: OrderBase, priority: Priority) -> aio_pika.Message:
    """The same message as aio-pika's Message, for publishing through aio-pika's own API (the benchmarks)."""
    properties = message_properties(order, priority)
    return aio_pika.Message(
        encode_order(order),
        content_type=properties.content_type,
        delivery_mode=properties.delivery_mode,
        message_id=properties.message_id,
        priority=properties.priority,
        timestamp=properties.timestamp,
        headers=properties.headers,
    )


async def publish_confirmed(
    channel: AbstractRobustChannel,
    body: bytes,
    properties: spec.Basic.Properties,
    *,
    queue: str,
    confirm_within: float,
) -> None:
    """Publish to `queue` through the default exchange and wait for the broker's confirm.

    The channel must be a confirm channel opened with `on_return_raises=True`, so that with `mandatory` an
    unroutable message is an error rather than a silent drop. Anything short of a confirm is a PublishError.
    """
    if channel.is_closed:
        raise PublishError("the broker connection is down")
    try:
        async with asyncio.timeout(confirm_within):
            # aiormq's own call, as aio-pika's Exchange.publish makes it but with wait=False: the channel's lock is
            # released once the frames are queued, not after the writer has written them, so concurrent publishes
            # are not serialized through the writer task. The confirm is still awaited.
            underlay = await channel.get_underlay_channel()
            assert isinstance(underlay, aiormq.Channel)  # the abstract one does not declare `wait`
            await underlay.basic_publish(body, routing_key=queue, properties=properties, mandatory=True, wait=False)
    except BROKER_ERRORS as exc:
        message_id = properties.message_id
        raise PublishError(f"the broker did not confirm message {message_id!r} to {queue!r}: {exc!r}") from exc


class OrderPublisher:
    """Publishes each order to its lane's work queue with its priority, persistent and confirmed."""

    def __init__(self, broker: Broker, settings: Settings, tracing: Tracing | None = None) -> None:
        self._broker = broker
        self._tracing = tracing
        self._vip_priority = settings.vip_priority
        self._max_priority = settings.max_priority
        self._timeout = settings.publish_timeout
        self._refusing = False
        self._waiting: set[asyncio.Task[object]] = set()
        """The tasks waiting for a confirm: cut off at once when the broker blocks publishing."""
        self._cut_off: dict[asyncio.Task[object], PublishError] = {}
        """The waiting tasks cancelled because no confirm will come, with the error each raises instead."""
        broker.blocked.add(
            lambda: self._cut_off_waiting(
                PublishBlocked(
                    "the broker blocked publishing (a memory or disk alarm) before it confirmed the order: it may "
                    "still store it when the alarm clears; retry with the same order_id"
                )
            )
        )
        self._last_confirmed = time.monotonic()
        """When the latest confirm (an ack) came, or the publisher was made: a publish that times out with none since
        it began, or nacks and nothing else for a whole publish timeout, mean the node stopped confirming."""

    @property
    def is_ready(self) -> bool:
        return self._broker.is_ready

    @property
    def is_blocked(self) -> bool:
        return self._broker.is_blocked

    async def publish(self, order: OrderBase, *, check_processed: bool = False) -> Receipt:
        if self._broker.is_blocked:
            # aiormq would hold the frames until the alarm clears: the client would wait out the publish timeout.
            if not self._refusing:
                logger.warning("the broker blocks publishing (a memory or disk alarm): orders get 503 until it lifts")
                self._refusing = True
            raise PublishBlocked(
                "the broker blocks publishing (a memory or disk alarm): the order was not sent; retry with the same "
                "order_id"
            )
        if self._refusing:
            logger.warning("the broker takes orders again")
            self._refusing = False
        priority = prioritize(order, vip_priority=self._vip_priority, max_priority=self._max_priority)
        queue = self._broker.topology.lane_for(priority.effective).work.name
        if self._tracing is None:
            properties = message_properties(order, priority, check_processed=check_processed)
            await self._publish(order, properties, queue)
        else:
            with self._tracing.publishing(order, priority, queue) as trace:
                properties = message_properties(order, priority, check_processed=check_processed, trace=trace)
                await self._publish(order, properties, queue)
        return Receipt(order_id=order.order_id, priority=priority, queue=queue)

    async def _publish(self, order: OrderBase, properties: spec.Basic.Properties, queue: str) -> None:
        """Publish and wait for the confirm, unless the broker blocks publishing meanwhile: then PublishBlocked at
        once (the message may still be stored when the alarm clears, so it counts as unconfirmed). A timeout with
        no confirm at all since this publish began, or only nacks for as long, gives up on the node
        (Broker.abandon_node): the publishes still
        waiting fail at once, and the next ones go to the next node instead of waiting out the timeout, and the
        heartbeat, on a node that confirms nothing."""
        if self._broker.abandoning_node:
            raise PublishError("gave up on a broker node that stopped confirming; reconnecting (nothing was sent)")
        task = asyncio.current_task()
        assert task is not None
        self._waiting.add(task)
        began = time.monotonic()
        try:
            await publish_confirmed(
                self._broker.channel, encode_order(order), properties, queue=queue, confirm_within=self._timeout
            )
            self._last_confirmed = time.monotonic()
        except PublishError as exc:
            if reason := self._stopped_confirming(exc, began):
                self._cut_off_waiting(
                    PublishError("the broker node stopped confirming; it may still store the order when it recovers")
                )
                self._broker.abandon_node(reason)
            raise
        except asyncio.CancelledError:
            error = self._cut_off.pop(task, None)
            if error is None or task.uncancel() > 0:  # not cut off, or cancelled by its caller too
                raise
            raise error from None
        finally:
            self._waiting.discard(task)

    def _stopped_confirming(self, failure: PublishError, began: float) -> str | None:
        """Why the node seems to have stopped confirming, or None. A timeout with no ack since the publish began; or
        nacks alone for a whole publish timeout (seen on RabbitMQ 3.10: a channel that reconnected to a quorum queue
        while it elected a new leader nacks every publish after, while a new channel publishes fine)."""
        if isinstance(failure.__cause__, TimeoutError) and self._last_confirmed < began:
            return f"it confirmed no publish for {self._timeout:g}s"
        if isinstance(failure.__cause__, aiormq.exceptions.DeliveryError):
            if time.monotonic() - self._last_confirmed >= self._timeout:
                return f"it refused every publish (nack) for {self._timeout:g}s"
        return None

    def _cut_off_waiting(self, error: PublishError) -> None:
        """No confirm will come (the broker blocks publishing, or the node stopped confirming): stop waiting for
        any; each waiting publish raises `error`."""
        for task in self._waiting - self._cut_off.keys():
            if task is not asyncio.current_task():
                self._cut_off[task] = error
                task.cancel()
