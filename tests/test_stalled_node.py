"""A broker node that stops confirming (its link dead, or cut off from its cluster's majority) is given up on at the
first publish that times out without a confirm since it began: the publisher moves to the next node at once rather
than waiting a minute for the heartbeat. The node is played by a TCP relay to the machine's broker that goes silent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import pytest
from pydantic import AmqpDsn

from broker.connection import open_broker
from broker.errors import PublishError
from broker.messages import Order
from broker.publisher import OrderPublisher
from broker.settings import Settings
from tests.amqp import amqp_url, wait_until

BROKER_PORT = 5672


class SilentRelay:
    """Relays TCP connections to the broker until `silence()`: from then on it reads both ways and forwards nothing,
    the sockets left open, as a link that died without a reset."""

    def __init__(self) -> None:
        self.silent = asyncio.Event()
        self.port = 0
        self._pipes: set[asyncio.Task[None]] = set()

    def silence(self) -> None:
        self.silent.set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with suppress(ConnectionError):
            while data := await reader.read(65536):
                if not self.silent.is_set():
                    writer.write(data)
                    await writer.drain()
        writer.close()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", BROKER_PORT)
        for pipe in (self._pipe(client_reader, broker_writer), self._pipe(broker_reader, client_writer)):
            task = asyncio.create_task(pipe)
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[SilentRelay]:
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            async with server:
                yield self
        finally:
            for task in list(self._pipes):
                task.cancel()
            await asyncio.gather(*self._pipes, return_exceptions=True)


@pytest.mark.skipif(not amqp_url().startswith("amqp://guest:guest@127.0.0.1:5672"), reason="relays to 5672")
async def test_a_node_that_stops_confirming_is_left_for_the_next_one(settings: Settings) -> None:
    async with SilentRelay().serving() as relay:
        through_relay = settings.model_copy(
            update={
                "amqp_url": AmqpDsn(f"amqp://guest:guest@127.0.0.1:{relay.port}/"),
                "amqp_failover_urls": (AmqpDsn(amqp_url()),),
                "publish_timeout": 1.0,
            }
        )
        async with open_broker(through_relay) as broker:
            publisher = OrderPublisher(broker, through_relay)
            await publisher.publish(Order(order_id="before", items=["a"]))
            relay.silence()
            with pytest.raises(PublishError, match="did not confirm"):
                await publisher.publish(Order(order_id="unconfirmed", items=["a"]))
            accepted: list[str] = []

            async def publishes_again() -> bool:
                try:
                    await publisher.publish(Order(order_id=f"after-{len(accepted)}", items=["a"]))
                except PublishError:
                    return False
                accepted.append("after")
                return True

            # The heartbeat would notice the silent node only after a minute: the first timeout must do it.
            await wait_until(publishes_again, within=10, what="a publish confirmed by the next node")
            transport = broker.connection.transport
            assert transport is not None
            assert transport.connection.url.port == BROKER_PORT
