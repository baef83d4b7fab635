"""Consumer processes: the runner, the delivery a handler sees, and the built-in order processor."""

from consumers.delivery import Delivery, Handler, current_delivery
from consumers.handlers import OrderProcessor
from consumers.runner import Consumer, consume_until_stopped

__all__ = ["Consumer", "Delivery", "Handler", "OrderProcessor", "consume_until_stopped", "current_delivery"]
