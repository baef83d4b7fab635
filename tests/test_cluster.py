"""On a real 3-node cluster (scripts/cluster), its queues mirrored by policy: a node killed under load loses no
order the API answered 202 for, a killed queue master costs at most the prefetch in duplicates, a VIP order still
overtakes the backlog after the failover, and a node that comes back is used again with nothing restarted.

Each test prints what it measured (`pytest -s tests/test_cluster.py`): docs/scaling.md quotes those lines."""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aio_pika
import httpx
import pytest
from pydantic import AmqpDsn, HttpUrl

from broker.connection import open_broker
from broker.settings import Settings
from tests.amqp import lane_queue, wait_until
from tests.cluster import Cluster, node_number, running_cluster
from tests.consuming import order_message
from tests.processes import environment, serving_api, start

pytestmark = pytest.mark.cluster

PROCESSED = "order processed"
SKIPPED = "already processed"
PREFETCH = 10
VIP_BROKER_PRIORITY = 10


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with running_cluster() as started:
        yield started


@pytest.fixture(autouse=True)
async def every_node_back(cluster: Cluster) -> AsyncIterator[None]:
    """A test that killed node 1 and failed before starting it again must not leave the next one a node short."""
    yield
    if not await cluster.healthy():
        await cluster.restart(1)


@pytest.fixture(params=["classic", "quorum"])
def replicated(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """The test's settings on each replicated queue type of RabbitMQ 3.x: classic queues mirrored by the tests'
    policy, and quorum queues (whose priorities, before 4.0, come from the lanes)."""
    queue_type: str = request.param
    return settings.model_copy(update={"queue_type": queue_type})


def on_node(settings: Settings, cluster: Cluster, node: int) -> Settings:
    return settings.model_copy(update={"amqp_url": AmqpDsn(cluster.url(node))})


def order_id_of(line: str) -> str:
    return line.split("order_id=")[1].split()[0]


@dataclass
class ConsumerLog:
    """A consumer process's log, read as it comes."""

    lines: list[str] = field(default_factory=list)

    def processed(self) -> collections.Counter[str]:
        """How often the handler ran for each order."""
        return collections.Counter(order_id_of(line) for line in self.lines if PROCESSED in line)

    def skipped(self) -> int:
        """Redeliveries the status store recognised as processed: acked without running the handler again."""
        return sum(SKIPPED in line for line in self.lines)


@asynccontextmanager
async def consumer_on(
    cluster: Cluster, settings: Settings, node: int, *, concurrency: int = PREFETCH, work_ms: int = 20
) -> AsyncIterator[ConsumerLog]:
    """`python -m consumers` connected to `node` first (the others as failover), until it says it is ready."""
    env = environment(
        on_node(settings, cluster, node),
        ORDERLANE_AMQP_FAILOVER_URLS=cluster.failover(node),
        ORDERLANE_SIMULATED_WORK_MS=str(work_ms),
        ORDERLANE_QUEUE_TYPE=settings.queue_type,
    )
    prefetch = str(min(PREFETCH, concurrency))
    consumer = await start("consumers", "--prefetch", prefetch, "--concurrency", str(concurrency), env=env)
    log = ConsumerLog()

    async def follow() -> None:
        assert consumer.stderr is not None
        async for line in consumer.stderr:
            log.lines.append(line.decode())

    reader = asyncio.create_task(follow())
    try:
        await wait_until(lambda: any("consumer ready" in line for line in log.lines), what="the consumer ready")
        yield log
    finally:
        consumer.terminate()
        await consumer.wait()
        await reader


@dataclass
class Intake:
    """What the clients were answered: the order_ids of each 202, and when each 503 came (loop time)."""

    accepted: list[str] = field(default_factory=list)
    accepted_at: list[float] = field(default_factory=list)
    refused_at: list[float] = field(default_factory=list)

    def accepted_since(self, moment: float) -> int:
        return sum(at >= moment for at in self.accepted_at)


async def post_until(port: int, client_id: str, intake: Intake, stop: asyncio.Event) -> None:
    """One client posting new orders one after another, as fast as it is answered, until `stop`."""
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for number in itertools.count():
            if stop.is_set():
                return
            order_id = f"{client_id}-{number}"
            response = await client.post("/orders", json={"order_id": order_id, "items": ["tea"]})
            if response.status_code == 202:
                intake.accepted.append(order_id)
                intake.accepted_at.append(loop.time())
            else:
                assert response.status_code == 503, response.text
                intake.refused_at.append(loop.time())


async def publish_backlog(url: str, queue: str, order_ids: list[str], priority: int = 0) -> None:
    """Publish past the API, persistent and confirmed, through the node at `url`."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        for order_id in order_ids:
            message = order_message(order_id, priority=priority, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await channel.default_exchange.publish(message, routing_key=queue)


async def declare_on(settings: Settings, cluster: Cluster, node: int) -> None:
    """Declare the queues through `node`, which makes it their master's node (RabbitMQ's client-local default)."""
    async with open_broker(on_node(settings, cluster, node)):
        pass
    master, mirrors = await cluster.queue_nodes(node, settings.queue)
    assert (master, mirrors) == (f"ol{node}@localhost", {f"ol{n}@localhost" for n in (1, 2, 3) if n != node})


async def test_killing_the_node_the_api_publishes_to_loses_no_accepted_order(
    cluster: Cluster, replicated: Settings
) -> None:
    """Four clients post as fast as they are answered through an API connected to node 1, which holds the queue's
    master too; node 1 is SIGKILLed mid-stream. The API fails over to another node and answers 202 again; every
    order it answered 202 for is processed. Then node 1 comes back and the same processes go on using the cluster."""
    await declare_on(replicated, cluster, 1)
    intake = Intake()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    api_env = {"ORDERLANE_AMQP_FAILOVER_URLS": cluster.failover(1), "ORDERLANE_QUEUE_TYPE": replicated.queue_type}
    async with (
        serving_api(on_node(replicated, cluster, 1), **api_env) as port,
        consumer_on(cluster, replicated, 2) as log,
    ):
        clients = [asyncio.create_task(post_until(port, f"c{n}", intake, stop)) for n in range(4)]
        await wait_until(lambda: len(intake.accepted) >= 300, what="300 orders accepted before the kill")
        killed_at = loop.time()
        await cluster.kill(1)
        await wait_until(lambda: intake.accepted_since(killed_at) >= 300, within=90, what="300 accepted after it")
        stop.set()
        await asyncio.gather(*clients)
        before_rejoin = len(intake.accepted)
        after_kill = [killed_at, *(at for at in intake.accepted_at if at > killed_at)]
        longest_without = max(later - earlier for earlier, later in itertools.pairwise(after_kill))

        await cluster.restart(1)
        assert await cluster.healthy()
        stop.clear()
        clients = [asyncio.create_task(post_until(port, f"r{n}", intake, stop)) for n in range(2)]
        await wait_until(lambda: len(intake.accepted) >= before_rejoin + 100, what="orders after the rejoin")
        stop.set()
        await asyncio.gather(*clients)
        await wait_until(
            lambda: set(intake.accepted) <= set(log.processed()), within=90, what="every accepted order processed"
        )
        await wait_until(
            lambda: _mirrors_on(cluster, replicated.queue, "ol1@localhost"), within=60, what="node 1 a mirror again"
        )
    processed = log.processed()
    refused = intake.refused_at
    window = (refused[-1] - refused[0]) if refused else 0.0
    print(
        f"\ncluster, {replicated.queue_type} queues, API's node killed: {len(intake.accepted)} accepted, 0 lost; "
        f"{len(refused)} answered 503, "
        f"over {window:.2f}s; longest time without a 202 after the kill {longest_without:.2f}s; handler runs "
        f"beyond one per order: {sum(processed.values()) - len(processed)}"
    )


async def _mirrors_on(cluster: Cluster, queue: str, node: str) -> bool:
    """Whether `node` holds a replica in sync again (a mirror, or an online quorum member; or the lead)."""
    try:
        leader, mirrors = await cluster.queue_nodes(2, queue)
    except LookupError:  # not listed while a new leader is elected
        return False
    return node in {leader, *mirrors}


async def test_killing_the_queue_masters_node_mid_drain_loses_nothing_and_duplicates_at_most_the_prefetch(
    cluster: Cluster, replicated: Settings
) -> None:
    """A consumer on node 2 drains a backlog whose queue master is on node 1; node 1 is SIGKILLed mid-drain. A
    mirror takes over, the unacked deliveries come again, and every order is processed; the handler runs twice for
    at most the deliveries the consumer held (its prefetch)."""
    await declare_on(replicated, cluster, 1)
    backlog = [f"d-{n:04d}" for n in range(2000)]
    await publish_backlog(cluster.url(2), replicated.queue, backlog)
    async with consumer_on(cluster, replicated, 2) as log:
        await wait_until(lambda: sum(log.processed().values()) >= 300, what="the drain under way")
        await cluster.kill(1)
        await wait_until(lambda: set(backlog) <= set(log.processed()), within=90, what="the whole backlog processed")
    await cluster.restart(1)
    processed = log.processed()
    again = sum(processed.values()) - len(processed)
    print(
        f"\ncluster, {replicated.queue_type} queues, queue leader killed mid-drain: {len(backlog)} orders, 0 lost, "
        f"handler ran again for {again}, "
        f"{log.skipped()} redeliveries skipped as processed (prefetch {PREFETCH})"
    )
    assert again <= PREFETCH


async def test_after_a_failover_a_vip_order_still_overtakes_the_backlog(cluster: Cluster, replicated: Settings) -> None:
    await declare_on(replicated, cluster, 1)
    await publish_backlog(cluster.url(2), replicated.queue, [f"b-{n:03d}" for n in range(200)])
    await cluster.kill(1)
    await wait_until(lambda: _master_moved(cluster, replicated.queue), within=60, what="a replica promoted")
    # Classic: behind the backlog in its queue, the broker priority alone puts it first. Quorum queues on 3.x have
    # no priorities: there it goes, as the API publishes it, to the urgent lane's queue, beside the backlog's.
    vip_queue = replicated.queue if replicated.queue_type == "classic" else lane_queue(replicated, 0)
    await wait_until(lambda: _master_moved(cluster, vip_queue), within=60, what="the VIP's queue led elsewhere too")
    await publish_backlog(cluster.url(2), vip_queue, ["vip"], priority=VIP_BROKER_PRIORITY)
    async with consumer_on(cluster, replicated, 2, concurrency=1, work_ms=0) as log:
        await wait_until(lambda: len(log.processed()) >= 5, what="the first orders processed")
    await cluster.restart(1)
    first = [order_id_of(line) for line in log.lines if PROCESSED in line][:2]
    assert "vip" in first, f"the VIP came after {first}"


async def _master_moved(cluster: Cluster, queue: str) -> bool:
    try:
        master, _ = await cluster.queue_nodes(2, queue)
    except LookupError:  # not listed while a new leader is elected
        return False
    return node_number(master) != 1


async def test_the_start_up_check_warns_of_queues_no_policy_mirrors(
    cluster: Cluster, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    mirrored = on_node(settings, cluster, 1).model_copy(update={"management_url": HttpUrl(cluster.management_url(1))})
    unmirrored = mirrored.model_copy(update={"queue": f"plain-{uuid.uuid4().hex[:8]}"})
    with caplog.at_level(logging.WARNING, logger="broker.mirroring"):
        async with open_broker(mirrored):
            pass
        assert not caplog.records, "the tests' policy mirrors test-*"
        async with open_broker(unmirrored):
            pass
    [warning] = caplog.records
    assert warning.getMessage().startswith(
        f"the cluster runs 3 nodes, but no policy mirrors {unmirrored.queue}.high, {unmirrored.queue}.high.retry.1"
    )
