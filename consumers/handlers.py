"""The built-in order processor, the handler `python -m consumers` runs unless told otherwise."""

from __future__ import annotations

import asyncio
import logging

from broker.errors import ConfigurationError
from broker.messages import Order
from broker.references import load_reference
from consumers.delivery import Handler, current_delivery, log_fields
from consumers.threads import SyncHandler

logger = logging.getLogger(__name__)


class OrderProcessor:
    """Logs one structured line per order after `work_seconds` of simulated work."""

    def __init__(self, work_seconds: float = 0.0) -> None:
        self._work_seconds = work_seconds

    async def __call__(self, order: Order) -> None:
        if self._work_seconds:
            await asyncio.sleep(self._work_seconds)
        delivery = current_delivery()
        logger.info(
            "order processed user_type=%s items=%d",
            order.user_type,
            len(order.items),
            extra=log_fields(order.order_id, delivery.priority, delivery.attempt),
        )


def load_handler(reference: str) -> Handler | SyncHandler:
    """Resolve `package.module:callable` (--handler, ORDERLANE_HANDLER): an async callable, or a plain function
    (consumers.threads runs it in threads)."""
    handler = load_reference(reference, "handler")
    if not callable(handler):
        raise ConfigurationError(f"handler {reference!r} is not callable")
    found: Handler | SyncHandler = handler
    return found
