"""The robust connection: one per process, with one confirm channel and the declared topology."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from yarl import URL

from broker.errors import BrokerRefused, BrokerUnavailable
from broker.mirroring import check_replication
from broker.settings import Settings, redacted
from broker.topology import Topology, build_topology, check_queue_type, declare_topology, keep_existing_levels

logger = logging.getLogger(__name__)

FIRST_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 5.0
RECONNECT_INTERVAL = 1.0
CONNECT_ATTEMPT_TIMEOUT = 10.0
FAILOVER_INTERVAL = 3.0


class NodeAbandoned(ConnectionError):
    """Why a connection was closed by this process: its node stopped confirming (Broker.abandon_node)."""


BROKER_ERRORS: Final = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
    TimeoutError,
)
"""What a call to the broker may raise; each means the call did not happen, or is not known to have happened."""


def refusal(exc: BaseException, redacted_url: str) -> BrokerRefused | None:
    """A failure that retrying cannot mend: wrong credentials, or a virtual host we may not use."""
    if isinstance(exc, aiormq.exceptions.AuthenticationError) or "ACCESS_REFUSED" in str(exc):
        return BrokerRefused(f"the broker at {redacted_url} refused the login: check the user and password")
    if isinstance(exc, aiormq.exceptions.InvalidFrameError):
        return BrokerRefused(
            f"the broker at {redacted_url} refused the connection: does the virtual host exist, "
            "and may the user use it?"
        )
    return None


@dataclass(frozen=True, slots=True)
class Broker:
    """What a process holds while it talks to RabbitMQ."""

    connection: AbstractRobustConnection
    channel: AbstractRobustChannel
    """The confirm channel everything is published on; consumers open channels of their own (one per lane)."""
    topology: Topology
    blocked: BlockedWatch
    """Tells whoever asks the moment the broker blocks publishing (a memory or disk alarm)."""
    nodes: Nodes | None = None
    """The node rotation of `connection` (None: a connection made elsewhere, which cannot be moved on)."""

    @property
    def is_ready(self) -> bool:
        """True while the connection and the channel are open (not closed, not reconnecting)."""
        return not self.connection.is_closed and not self.channel.is_closed

    @property
    def is_blocked(self) -> bool:
        """True while the broker blocks this connection's publishes (`connection.blocked`: a memory or disk alarm)."""
        return publishing_blocked(self.connection)

    @property
    def abandoning_node(self) -> bool:
        """True while the connection to a node given up on (`abandon_node`) is being closed."""
        return self.nodes is not None and self.nodes.abandoning

    def abandon_node(self, reason: str) -> None:
        """Give up on the node this connection is on, as one that stopped confirming (a node cut off from its
        cluster's majority confirms nothing, and one whose link is down is noticed by the heartbeat only after a
        minute): the robust connection moves to the next node at once (Nodes.abandon)."""
        if self.nodes is not None:
            self.nodes.abandon(reason)


BLOCKED_HANDLER: Final = "_Connection__handle_connection_blocked"
UNBLOCKED_EVENT: Final = "_Connection__connection_unblocked"
"""aiormq handles `connection.blocked` / `unblocked` itself, holding every outgoing frame meanwhile, and offers no
public hook: its handler and its event are reached by their (name-mangled) names. tests/test_faults.py raises a
real memory alarm, so an aiormq that renames them fails there, not in production."""


def publishing_blocked(connection: AbstractRobustConnection) -> bool:
    transport = connection.transport
    if transport is None:
        return False
    unblocked: asyncio.Event | None = getattr(transport.connection, UNBLOCKED_EVENT, None)
    # The event first: it is set while not blocked, which is nearly always, and `is_opened` costs a few attribute
    # lookups and two task checks on every publish.
    return unblocked is not None and not unblocked.is_set() and transport.connection.is_opened


class BlockedWatch:
    """Calls its callbacks as soon as the broker blocks the connection (after a reconnect too). The broker sends
    `connection.blocked` as it blocks a publishing connection, so whoever waits for a confirm can learn of it at
    once rather than at its timeout: aiormq's handler of the frame is wrapped on each connection it makes."""

    def __init__(self, connection: AbstractRobustConnection) -> None:
        self._connection = connection
        self._callbacks: list[Callable[[], None]] = []
        self._install()
        connection.reconnect_callbacks.add(self._install)

    def add(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def _install(self, _: object = None) -> None:
        transport = self._connection.transport
        if transport is None:
            return
        handle = getattr(transport.connection, BLOCKED_HANDLER)

        async def handle_then_tell(frame: object) -> None:
            await handle(frame)
            for callback in self._callbacks:
                callback()

        setattr(transport.connection, BLOCKED_HANDLER, handle_then_tell)


async def connect(settings: Settings, name: str = "orderlane") -> AbstractRobustConnection:
    """Connect robustly (`name` is what the broker shows for the connection), retrying with exponential backoff
    for at most `startup_timeout` seconds, trying the broker URLs in turn. Once connected, aio-pika's robust
    connection heals drops by itself; with failover URLs, every `FAILOVER_INTERVAL` without a connection moves it
    on to the next node."""
    return (await connect_nodes(settings, name)).connection


async def connect_nodes(settings: Settings, name: str = "orderlane") -> Nodes:
    """`connect`, keeping hold of the node rotation, through which a node can be given up on (Nodes.abandon)."""
    urls = [str(url) for url in settings.broker_urls]
    shown = [redacted(url) for url in settings.broker_urls]
    connection, index = await _first_connection(settings, urls, shown, name)
    return Nodes(connection, urls, shown, index)


class Nodes:
    """The broker nodes one robust connection may use and the one it is on. A connection lost, or a node given up
    on, starts the failover: every `FAILOVER_INTERVAL` without a connection moves it on to the next node."""

    def __init__(self, connection: AbstractRobustConnection, urls: list[str], shown: list[str], index: int) -> None:
        assert isinstance(connection, aio_pika.RobustConnection)  # aio-pika's reconnect loop reads its url
        self.connection = connection
        self._urls = urls
        self._shown = shown
        self._index = index
        self._failover: set[asyncio.Task[None]] = set()
        self._abandoning: set[asyncio.Task[None]] = set()
        connection.close_callbacks.add(self._lost)
        connection.reconnect_callbacks.add(self._back)

    @property
    def abandoning(self) -> bool:
        """True while the connection to a node given up on is being closed."""
        return bool(self._abandoning)

    def abandon(self, reason: str) -> None:
        """Give up on the current node: point the connection at the next one, then close it under the robust
        connection, which reconnects there at once (and fails over further if that one does not answer)."""
        transport = self.connection.transport
        if self._abandoning or transport is None or transport.connection.is_closed:
            return
        logger.warning("giving up on the broker node at %s: %s", self._shown[self._index], reason)
        self._next()
        task = asyncio.get_running_loop().create_task(transport.connection.close(NodeAbandoned(reason)))
        self._abandoning.add(task)
        task.add_done_callback(self._abandoning.discard)

    def _next(self) -> None:
        if len(self._urls) > 1:
            self._index = (self._index + 1) % len(self._urls)
            self.connection.url = URL(self._urls[self._index])
            logger.warning("trying the next broker node, %s", self._shown[self._index])

    async def _fail_over(self, *, moved: bool) -> None:
        if moved:  # already pointed at the next node: give it its interval first
            await asyncio.sleep(FAILOVER_INTERVAL)
        while not self.connection.connected.is_set() and not self.connection.is_closed:
            self._next()
            await asyncio.sleep(FAILOVER_INTERVAL)

    def _lost(self, _: object, exc: BaseException | None) -> None:
        connection = self.connection
        abandoned = bool(self._abandoning)
        if (
            connection.close_called
            or connection.is_closed
            or (isinstance(exc, asyncio.CancelledError) and not abandoned)
        ):
            return
        if not abandoned:  # abandon() said why already
            logger.warning(
                "lost the broker at %s (%s); reconnecting every %gs", self._shown[self._index], exc, RECONNECT_INTERVAL
            )
        if len(self._urls) > 1 and not self._failover:
            task = asyncio.get_running_loop().create_task(self._fail_over(moved=abandoned))
            self._failover.add(task)
            task.add_done_callback(self._failover.discard)

    def _back(self, _: object) -> None:
        logger.info("reconnected to the broker at %s", self._shown[self._index])


async def _first_connection(
    settings: Settings, urls: list[str], shown: list[str], name: str
) -> tuple[AbstractRobustConnection, int]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.startup_timeout
    delay = FIRST_RETRY_DELAY
    attempt = 1
    while True:
        index = (attempt - 1) % len(urls)
        try:
            connection = await aio_pika.connect_robust(
                urls[index],
                timeout=CONNECT_ATTEMPT_TIMEOUT,
                reconnect_interval=RECONNECT_INTERVAL,
                client_properties={"connection_name": name},
            )
        except BROKER_ERRORS as exc:
            if refused := refusal(exc, shown[index]):
                raise refused from exc
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BrokerUnavailable(
                    f"no broker answered at {', '.join(shown)} "
                    f"after {attempt} attempts in {settings.startup_timeout:g}s: {exc}"
                ) from exc
            pause = min(delay, remaining)
            logger.warning(
                "broker not reachable at %s (attempt %d: %s); retrying in %.1fs", shown[index], attempt, exc, pause
            )
            await asyncio.sleep(pause)
            delay = min(delay * 2, MAX_RETRY_DELAY)
            attempt += 1
        else:
            return connection, index


def server_version(connection: AbstractRobustConnection) -> str:
    """The RabbitMQ version the broker announced when we connected."""
    transport = connection.transport
    assert transport is not None
    version = transport.connection.server_properties.get("version", b"")
    return version.decode() if isinstance(version, bytes) else str(version)


@asynccontextmanager
async def open_broker(settings: Settings) -> AsyncIterator[Broker]:
    """Connect, open the confirm channel (returns raise), declare the topology; close everything on exit."""
    nodes = await connect_nodes(settings)
    connection = nodes.connection
    try:
        version = server_version(connection)
        check_queue_type(settings, version)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            topology = await keep_existing_levels(connection, build_topology(settings, version))
            await declare_topology(channel, topology)
        except BROKER_ERRORS as exc:
            raise BrokerRefused(f"the broker refused to set up the queues: {exc}") from exc
        logger.info("connected, queues ready: %s", ", ".join(lane.work.name for lane in topology.lanes))
        await check_replication(settings, topology)
        blocked = BlockedWatch(connection)
        yield Broker(connection=connection, channel=channel, topology=topology, blocked=blocked, nodes=nodes)
    finally:
        await connection.close()
