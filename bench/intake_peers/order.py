"""What every peer app shares: the FastAPI + Celery original's order model, where to publish, and the priority RabbitMQ
should see."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, Field

MAX_PRIORITY = 10


class OrderRequest(BaseModel):
    """The original's OrderRequest, with the bounds orderlane's Order has."""

    order_id: str = Field(min_length=1, max_length=64)
    priority: int = Field(default=5, ge=0, le=9)
    items: list[str] = Field(min_length=1, max_length=100)
    user_type: Literal["regular", "vip"] | None = "regular"

    @property
    def broker_priority(self) -> int:
        """0 is the most urgent order, and RabbitMQ delivers the highest number first; VIP orders go first."""
        return MAX_PRIORITY if self.user_type == "vip" else 9 - self.priority


AMQP_URL = os.environ.get("ORDERLANE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
QUEUE = os.environ.get("ORDERLANE_QUEUE", "orders")
QUEUE_ARGUMENTS = {"x-max-priority": MAX_PRIORITY}
