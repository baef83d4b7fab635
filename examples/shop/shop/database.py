"""The shop's tables in PostgreSQL, and recording an order in them exactly once.

`orders` has `order_id` as its primary key and every order is inserted with `ON CONFLICT (order_id) DO NOTHING`, in
one transaction with its lines: a redelivered order (orderlane delivers at least once) finds its row and writes
nothing, and two deliveries of one order at the same moment serialise on that key.
"""

from __future__ import annotations

import asyncpg

from shop.models import ShopOrder

TABLES_LOCK = 0x73686F70  # "shop": any constant, the same in every consumer process
TABLES = """
CREATE TABLE IF NOT EXISTS products (
    sku text PRIMARY KEY,
    name text NOT NULL
);
CREATE TABLE IF NOT EXISTS orders (
    order_id text PRIMARY KEY,
    email text NOT NULL,
    priority smallint NOT NULL,
    total numeric(18, 2) NOT NULL,
    address jsonb NOT NULL,
    note text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS order_lines (
    order_id text NOT NULL REFERENCES orders ON DELETE CASCADE,
    line_no smallint NOT NULL,
    sku text NOT NULL,
    quantity integer NOT NULL CHECK (quantity > 0),
    unit_price numeric(10, 2) NOT NULL CHECK (unit_price > 0),
    PRIMARY KEY (order_id, line_no)
);
"""
INSERT_ORDER = """
INSERT INTO orders (order_id, email, priority, total, address, note)
VALUES ($1, $2, $3, $4, $5::jsonb, $6)
ON CONFLICT (order_id) DO NOTHING
RETURNING order_id
"""
INSERT_LINE = "INSERT INTO order_lines (order_id, line_no, sku, quantity, unit_price) VALUES ($1, $2, $3, $4, $5)"
KNOWN_SKUS = "SELECT sku FROM products WHERE sku = ANY($1::text[])"


class UnknownProducts(Exception):
    """An order names SKUs the catalogue (`products`) does not have: no retry will make it valid."""

    def __init__(self, skus: list[str]) -> None:
        self.skus = skus
        super().__init__(f"not in the catalogue: {', '.join(skus)}")


async def create_tables(pool: asyncpg.Pool) -> None:
    """Create the tables where they are missing. Under an advisory lock: concurrent `CREATE TABLE IF NOT EXISTS`
    of one table can fail in PostgreSQL, and several consumers may start at once."""
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", TABLES_LOCK)
        await connection.execute(TABLES)


async def record_order(pool: asyncpg.Pool, order: ShopOrder) -> bool:
    """Insert the order and its lines in one transaction. False, and nothing written, when the order was recorded
    before; UnknownProducts, and nothing written, when a line's SKU is not in the catalogue."""
    async with pool.acquire() as connection, connection.transaction():
        inserted = await connection.fetchval(
            INSERT_ORDER,
            order.order_id,
            order.customer_email,
            order.priority,
            order.total,
            order.shipping_address.model_dump_json(),
            order.note,
        )
        if inserted is None:
            return False
        skus = sorted({line.sku for line in order.items})
        known = {row["sku"] for row in await connection.fetch(KNOWN_SKUS, skus)}
        if unknown := [sku for sku in skus if sku not in known]:
            raise UnknownProducts(unknown)  # leaving the transaction rolls the order's row back
        await connection.executemany(
            INSERT_LINE,
            [
                (order.order_id, number, line.sku, line.quantity, line.unit_price)
                for number, line in enumerate(order.items, start=1)
            ],
        )
    return True
