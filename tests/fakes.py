"""Test doubles at the seams: a publisher that records instead of talking to a broker."""

from __future__ import annotations

from broker.errors import PublishError
from broker.messages import OrderBase
from broker.priority import prioritize
from broker.publisher import Receipt
from broker.settings import Settings


class RecordingPublisher:
    def __init__(self, settings: Settings | None = None, *, ready: bool = True) -> None:
        self.settings = settings or Settings()
        self.published: list[OrderBase] = []
        self.ready = ready

    @property
    def is_ready(self) -> bool:
        return self.ready

    @property
    def is_blocked(self) -> bool:
        return False

    async def publish(self, order: OrderBase, *, check_processed: bool = False) -> Receipt:
        if not self.ready:
            raise PublishError("recording publisher is down")
        self.published.append(order)
        priority = prioritize(order, vip_priority=self.settings.vip_priority, max_priority=self.settings.max_priority)
        return Receipt(order.order_id, priority, self.settings.queue)
