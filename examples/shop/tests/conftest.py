"""Fixtures of the shop's tests: a database schema of each test's own, and orderlane settings for the shop."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from shopkit import ShopDatabase, shop_database

from broker import Settings


@pytest.fixture
async def database() -> AsyncIterator[ShopDatabase]:
    async with shop_database() as created:
        yield created


@pytest.fixture
def settings() -> Settings:
    """orderlane's settings with the shop's order model, on queues of this test's own; retries come back fast."""
    return Settings(
        queue=f"shop-test-{uuid.uuid4().hex[:12]}",
        order_model="shop.models:ShopOrder",
        startup_timeout=10,
        retry_base_seconds=0.05,
        retry_max_seconds=0.5,
    )
