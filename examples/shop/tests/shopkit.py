"""What the shop's tests share: a PostgreSQL schema of a test's own with the catalogue in it, sample orders, a free
port."""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import asyncpg
from shop.database import create_tables
from shop.handler import DEFAULT_DATABASE_URL
from shop.models import ShopOrder

CATALOGUE = {"TEA-001": "Green tea, 100 g", "MUG-002": "Stoneware mug"}


@dataclass(frozen=True)
class ShopDatabase:
    """A schema of one test's own: `url` connects with it as the search path, so the shop's unqualified table
    names land there, and parallel runs never meet."""

    server_url: str
    schema: str

    @property
    def url(self) -> str:
        separator = "&" if "?" in self.server_url else "?"
        return f"{self.server_url}{separator}options={quote(f'-csearch_path={self.schema}')}"

    async def count(self, table: str, order_id: str) -> int:
        """Rows of `table` (orders or order_lines) for `order_id`."""
        connection = await asyncpg.connect(self.url)
        try:
            found: int = await connection.fetchval(f"SELECT count(*) FROM {table} WHERE order_id = $1", order_id)
        finally:
            await connection.close()
        return found


@asynccontextmanager
async def shop_database() -> AsyncIterator[ShopDatabase]:
    """A fresh schema on the server at SHOP_DATABASE_URL (else the shop's default) with the shop's tables and the
    catalogue in it, dropped with all it holds on the way out."""
    server_url = os.environ.get("SHOP_DATABASE_URL") or DEFAULT_DATABASE_URL
    database = ShopDatabase(server_url, f"shop_test_{uuid.uuid4().hex[:12]}")
    server = await asyncpg.connect(server_url)
    try:
        await server.execute(f"CREATE SCHEMA {database.schema}")
        async with asyncpg.create_pool(database.url, min_size=1, max_size=1) as pool:
            await create_tables(pool)
            await pool.executemany("INSERT INTO products (sku, name) VALUES ($1, $2)", CATALOGUE.items())
        yield database
    finally:
        await server.execute(f"DROP SCHEMA IF EXISTS {database.schema} CASCADE")
        await server.close()


def free_port() -> int:
    """A port nothing listens on (until something binds it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def order_body(order_id: str, **changes: Any) -> dict[str, Any]:
    """A valid order as a client posts it (JSON-ready): prices as JSON strings and numbers alike."""
    body: dict[str, Any] = {
        "order_id": order_id,
        "priority": 3,
        "user_type": "vip",
        "items": [
            {"sku": "TEA-001", "quantity": 2, "unit_price": "4.50"},
            {"sku": "MUG-002", "quantity": 1, "unit_price": 12.5},
        ],
        "customer_email": "ada@example.com",
        "shipping_address": {
            "name": "Ada Lovelace",
            "street": "12 St James's Square",
            "city": "London",
            "postcode": "SW1Y 4JH",
            "country": "GB",
        },
    }
    return body | changes


def shop_order(order_id: str, **changes: Any) -> ShopOrder:
    """`order_body` as the consumer's handler receives it: validated from JSON, as orderlane does."""
    return ShopOrder.model_validate_json(json.dumps(order_body(order_id, **changes)))


TOTAL = Decimal("21.50")
"""What `order_body` costs: 2 x 4.50 + 1 x 12.50."""
