"""The shop's orderlane handler: each order into PostgreSQL, once (`ORDERLANE_HANDLER=shop.handler:handle`).

The consumer enters the handler (`async with`) in its own event loop before the first delivery, which opens the
connection pool, and exits it after it stops. Outcomes, as orderlane's ack policy reads them:

- recorded, or found recorded before (a redelivery): the handler returns, the message is acked;
- a SKU the catalogue does not have: PermanentFailure, the order is dead-lettered at once;
- the database fails or is away: the error propagates, the order is retried with backoff.
"""

from __future__ import annotations

import logging
import os
from types import TracebackType
from typing import Self

import asyncpg

from broker import PermanentFailure
from consumers import current_delivery
from consumers.delivery import log_fields
from shop.database import UnknownProducts, create_tables, record_order
from shop.models import ShopOrder

logger = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
POOL_SIZE = 10
"""Connections at most; one is opened at start, so a database that cannot be reached stops the consumer there."""
CONNECT_TIMEOUT_SECONDS = 10.0
QUERY_TIMEOUT_SECONDS = 10.0
"""Both well below ORDERLANE_HANDLER_TIMEOUT (60 s): a database that hangs fails the attempt, which is retried."""


class ShopHandler:
    """Records orders in the database at `database_url` (default: SHOP_DATABASE_URL when entered, else
    DEFAULT_DATABASE_URL). Entered once: the pool it opens is closed on exit, and the handler with it."""

    def __init__(self, database_url: str | None = None) -> None:
        self._database_url = database_url
        self._pool: asyncpg.Pool | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        if self._pool is not None or self._closed:
            raise RuntimeError("a ShopHandler is entered once")
        url = self._database_url or os.environ.get("SHOP_DATABASE_URL") or DEFAULT_DATABASE_URL
        pool = await asyncpg.create_pool(
            url, min_size=1, max_size=POOL_SIZE, timeout=CONNECT_TIMEOUT_SECONDS, command_timeout=QUERY_TIMEOUT_SECONDS
        )
        try:
            await create_tables(pool)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        pool, self._pool, self._closed = self._pool, None, True
        if pool is not None:
            await pool.close()

    async def __call__(self, order: ShopOrder) -> None:
        if self._pool is None:
            raise RuntimeError("enter the ShopHandler first (`async with handler:`), as the consumer does")
        delivery = current_delivery()
        fields = log_fields(order.order_id, delivery.priority, delivery.attempt)
        try:
            recorded = await record_order(self._pool, order)
        except UnknownProducts as exc:
            raise PermanentFailure(str(exc)) from exc
        if recorded:
            logger.info("order recorded: %d lines, total %s", len(order.items), order.total, extra=fields)
        else:
            logger.info("order already recorded: nothing written", extra=fields)


handle = ShopHandler()
"""The instance `ORDERLANE_HANDLER=shop.handler:handle` names."""
