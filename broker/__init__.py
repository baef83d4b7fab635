"""What the API and the consumers share: settings, the order, priorities, topology, connection, publisher, and the
order status store; and the Python clients that submit orders as the API takes them."""

from broker.client import AsyncOrderClient, OrderClient
from broker.connection import Broker, open_broker
from broker.errors import (
    BacklogOverBudget,
    BrokerRefused,
    BrokerUnavailable,
    ClientClosed,
    ConfigurationError,
    DeadlinePassed,
    InvalidMessage,
    OrderIdConflict,
    OrderInProgress,
    OrderlaneError,
    PermanentFailure,
    PublishBlocked,
    PublishError,
    StatusUnavailable,
    TopologyConflict,
)
from broker.messages import Order, OrderBase
from broker.priority import Priority, prioritize
from broker.publisher import OrderPublisher, Publisher, Receipt
from broker.settings import Settings
from broker.status import OrderStatus
from broker.status_store import StatusStore, open_status_store

__all__ = [
    "AsyncOrderClient",
    "BacklogOverBudget",
    "Broker",
    "BrokerRefused",
    "BrokerUnavailable",
    "ClientClosed",
    "ConfigurationError",
    "DeadlinePassed",
    "InvalidMessage",
    "Order",
    "OrderBase",
    "OrderClient",
    "OrderIdConflict",
    "OrderInProgress",
    "OrderPublisher",
    "OrderStatus",
    "OrderlaneError",
    "PermanentFailure",
    "Priority",
    "PublishBlocked",
    "PublishError",
    "Publisher",
    "Receipt",
    "Settings",
    "StatusStore",
    "StatusUnavailable",
    "TopologyConflict",
    "open_broker",
    "open_status_store",
    "prioritize",
]
