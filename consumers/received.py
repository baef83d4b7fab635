"""A delivery as it came off the channel, read lazily.

aio-pika wraps every delivery in an `IncomingMessage` (some thirty attribute writes through a checked
`__setattr__`) and runs the consumer callback in a task of its own, on top of the task aiormq already starts per
delivery: a measurable share of a saturated consumer's CPU (docs/benchmarks.md), and CPU is what a VIP order's wait
is made of once the consumer is busy. The subscription therefore consumes
on aiormq's channel under aio-pika's robust one, and the consumer reads the few fields it needs from here.
"""

from __future__ import annotations

from typing import Protocol

from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic
from pamqp.common import FieldTable

from broker.properties import PropertiesView
from consumers.acks import Acks, Settlement


class Headed(Protocol):
    @property
    def headers(self) -> FieldTable: ...


class Received(PropertiesView):
    """The fields of one delivery that the ack policy, the logs and a republished copy need; it is settled on the
    channel that delivered it (its delivery tags mean nothing on any other)."""

    __slots__ = ("_acks", "_delivered", "_delivery", "_properties", "headers", "settled")

    def __init__(self, delivered: DeliveredMessage, acks: Acks) -> None:
        assert isinstance(delivered.delivery, Basic.Deliver), "a consumer's delivery"
        self._delivered = delivered
        self._delivery = delivered.delivery
        self._properties = delivered.header.properties
        self._acks = acks
        self.headers: FieldTable = self._properties.headers or {}
        self.settled = False
        acks.received(self._tag)

    @property
    def body(self) -> bytes:
        return self._delivered.body

    @property
    def redelivered(self) -> bool:
        return bool(self._delivery.redelivered)

    @property
    def channel_is_closed(self) -> bool:
        return self._acks.channel.is_closed

    def ack(self) -> None:
        """Done with: sent with the others decided in this turn of the event loop (consumers/acks.py)."""
        self.settled = True
        self._acks.record(self._tag, Settlement.ACK)

    def requeue(self) -> None:
        """Back to the broker, to be delivered again."""
        self.settled = True
        self._acks.record(self._tag, Settlement.REQUEUE)

    @property
    def _tag(self) -> int:
        tag = self._delivery.delivery_tag
        assert tag is not None
        return tag
