"""What the API and the consumers share: settings, the order, priorities, topology, connection, publisher."""

from broker.connection import Broker, open_broker
from broker.errors import (
    BrokerRefused,
    BrokerUnavailable,
    ConfigurationError,
    InvalidMessage,
    OrderlaneError,
    PermanentFailure,
    PublishError,
    TopologyConflict,
)
from broker.messages import Order
from broker.priority import Priority, prioritize
from broker.publisher import OrderPublisher, Publisher, Receipt
from broker.settings import Settings

__all__ = [
    "Broker",
    "BrokerRefused",
    "BrokerUnavailable",
    "ConfigurationError",
    "InvalidMessage",
    "Order",
    "OrderPublisher",
    "OrderlaneError",
    "PermanentFailure",
    "Priority",
    "PublishError",
    "Publisher",
    "Receipt",
    "Settings",
    "TopologyConflict",
    "open_broker",
    "prioritize",
]
