"""The robust connection: one per process, with one confirm channel and the declared topology."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractQueue, AbstractRobustChannel, AbstractRobustConnection

from broker.errors import BrokerUnavailable
from broker.settings import Settings
from broker.topology import Topology, build_topology, declare_topology

logger = logging.getLogger(__name__)

FIRST_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 5.0
RECONNECT_INTERVAL = 1.0
CONNECT_ATTEMPT_TIMEOUT = 10.0

_CONNECT_ERRORS = (ConnectionError, OSError, asyncio.TimeoutError, aio_pika.exceptions.AMQPConnectionError)


@dataclass(frozen=True, slots=True)
class Broker:
    """What a process holds while it talks to RabbitMQ."""

    connection: AbstractRobustConnection
    channel: AbstractRobustChannel
    topology: Topology
    work_queue: AbstractQueue

    @property
    def is_ready(self) -> bool:
        """True while the connection and the channel are open (not closed, not reconnecting)."""
        return not self.connection.is_closed and not self.channel.is_closed


async def connect(settings: Settings) -> AbstractRobustConnection:
    """Connect robustly, retrying with exponential backoff for at most `startup_timeout` seconds.

    Once connected, aio-pika's robust connection heals later drops by itself every RECONNECT_INTERVAL.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.startup_timeout
    delay = FIRST_RETRY_DELAY
    attempt = 1
    while True:
        try:
            return await aio_pika.connect_robust(
                str(settings.amqp_url),
                timeout=CONNECT_ATTEMPT_TIMEOUT,
                reconnect_interval=RECONNECT_INTERVAL,
                client_properties={"connection_name": "orderlane"},
            )
        except _CONNECT_ERRORS as exc:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BrokerUnavailable(
                    f"no broker answered at {settings.redacted_amqp_url} "
                    f"after {attempt} attempts in {settings.startup_timeout:g}s: {exc}"
                ) from exc
            logger.warning(
                "broker not reachable at %s (attempt %d: %s); retrying in %.1fs",
                settings.redacted_amqp_url,
                attempt,
                exc,
                min(delay, remaining),
            )
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, MAX_RETRY_DELAY)
            attempt += 1


@asynccontextmanager
async def open_broker(settings: Settings) -> AsyncIterator[Broker]:
    """Connect, open the confirm channel (returns raise), declare the topology; close everything on exit."""
    connection = await connect(settings)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        topology = build_topology(settings)
        work_queue = await declare_topology(channel, topology)
        logger.info("connected to %s, queue %r ready", settings.redacted_amqp_url, topology.work.name)
        yield Broker(connection=connection, channel=channel, topology=topology, work_queue=work_queue)
    finally:
        await connection.close()
