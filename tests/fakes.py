"""Test doubles at the seams: a publisher that records instead of talking to a broker."""

from __future__ import annotations

from broker.errors import PublishError
from broker.messages import Order
from broker.priority import prioritize
from broker.publisher import Receipt


class RecordingPublisher:
    def __init__(self, *, ready: bool = True, queue: str = "orders") -> None:
        self.published: list[Order] = []
        self.ready = ready
        self.queue = queue

    @property
    def is_ready(self) -> bool:
        return self.ready

    async def publish(self, order: Order) -> Receipt:
        if not self.ready:
            raise PublishError("recording publisher is down")
        self.published.append(order)
        return Receipt(order.order_id, prioritize(order, vip_priority=0, max_priority=10), self.queue)
