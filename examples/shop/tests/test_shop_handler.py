"""The shop's handler, one order at a time, with orderlane's test kit: what the consumer would do after each run,
and what is in PostgreSQL. No broker, no Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import asyncpg
import pytest
from shop.handler import ShopHandler
from shopkit import TOTAL, ShopDatabase, free_port, shop_order

from broker import Settings
from consumers.testing import Acked, DeadLettered, Retried, run_handler


async def test_an_order_is_recorded_with_its_lines(database: ShopDatabase, settings: Settings) -> None:
    async with ShopHandler(database.url) as handle:
        assert await run_handler(handle, shop_order("h-1"), settings=settings) == Acked()
    assert await database.count("orders", "h-1") == 1
    assert await database.count("order_lines", "h-1") == 2
    connection = await asyncpg.connect(database.url)
    try:
        row = await connection.fetchrow("SELECT email, priority, total, address FROM orders WHERE order_id = 'h-1'")
    finally:
        await connection.close()
    assert row is not None
    assert (row["email"], row["priority"], row["total"]) == ("ada@example.com", 3, TOTAL)
    assert json.loads(row["address"])["country"] == "GB"


async def test_a_redelivered_order_is_acked_and_never_a_second_row(database: ShopDatabase, settings: Settings) -> None:
    async with ShopHandler(database.url) as handle:
        assert await run_handler(handle, shop_order("h-2"), settings=settings) == Acked()
        again = await run_handler(handle, shop_order("h-2"), attempt=2, redelivered=True, settings=settings)
    assert again == Acked()
    assert await database.count("orders", "h-2") == 1
    assert await database.count("order_lines", "h-2") == 2


async def test_a_sku_the_catalogue_lacks_is_dead_lettered_at_once_and_nothing_written(
    database: ShopDatabase, settings: Settings
) -> None:
    lines = [
        {"sku": "TEA-001", "quantity": 1, "unit_price": "4.50"},
        {"sku": "GONE-404", "quantity": 1, "unit_price": 1},
    ]
    async with ShopHandler(database.url) as handle:
        outcome = await run_handler(handle, shop_order("h-3", items=lines), settings=settings)
    assert isinstance(outcome, DeadLettered) and outcome.reason == "permanent"
    assert "GONE-404" in str(outcome.error)
    assert await database.count("orders", "h-3") == 0, "the order's row is rolled back with the refusal"


async def test_the_database_gone_is_retried(database: ShopDatabase, settings: Settings) -> None:
    """The handler started against the database, which then went away: its connections dropped, its port closed."""
    server = urlsplit(database.url)
    async with forwarded(server.hostname or "127.0.0.1", server.port or 5432) as (port, cut):
        user = server.netloc.rpartition("@")[0]
        forwarded_url = server._replace(netloc=f"{user}@127.0.0.1:{port}").geturl()
        async with ShopHandler(forwarded_url) as handle:
            await cut()
            outcome = await run_handler(handle, shop_order("h-4"), settings=settings)
    assert isinstance(outcome, Retried), outcome
    assert outcome.next_attempt == 2
    assert await database.count("orders", "h-4") == 0


async def test_a_handler_refuses_to_start_without_its_database() -> None:
    """Entering fails at once, so the consumer stops before it takes an order it could only retry."""
    with pytest.raises(OSError):
        async with ShopHandler(f"postgresql://postgres@127.0.0.1:{free_port()}/test"):
            pass


@asynccontextmanager
async def forwarded(host: str, port: int) -> AsyncIterator[tuple[int, Callable[[], Awaitable[None]]]]:
    """A local port forwarding to `host:port`, and `cut`: it closes every forwarded connection and the port."""
    streams: set[asyncio.StreamWriter] = set()
    pipes: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def forward(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(host, port)
        streams.update((client_writer, server_writer))
        for task in (pipe(client_reader, server_writer), pipe(server_reader, client_writer)):
            pipes.add(asyncio.create_task(task))

    async def cut() -> None:
        listener.close()
        for writer in streams:
            writer.close()
        await asyncio.gather(*pipes)
        await listener.wait_closed()

    listener = await asyncio.start_server(forward, "127.0.0.1", 0)
    try:
        yield listener.sockets[0].getsockname()[1], cut
    finally:
        await cut()
