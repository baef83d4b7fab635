"""What the lifespan hands to every request, and the one function that reads it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from api.metrics import ApiMetrics
from broker.estimates import WaitEstimates
from broker.intake import Intake
from broker.messages import OrderBase
from broker.publisher import Publisher
from broker.queues import QueueStats
from broker.settings import Settings
from broker.status_store import StatusStore

BacklogSource = Callable[[], Awaitable[list[QueueStats]]]


@dataclass(frozen=True, slots=True)
class Services:
    """What the lifespan hands to every request."""

    settings: Settings
    order_model: type[OrderBase]
    publisher: Publisher
    intake: Intake
    status: StatusStore | None
    metrics: ApiMetrics
    backlog: BacklogSource | None
    openapi: dict[str, Any]
    estimates: WaitEstimates | None = None
    """The lanes' expected waits (broker/estimates.py), when the API has its broker and a status store."""


def services(request: Request) -> Services:
    """The only reader of `request.state`."""
    found: Services = request.state.services
    return found
