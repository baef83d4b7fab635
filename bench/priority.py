"""Priority: how long a VIP order waits behind a sustained backlog, and at what throughput the backlog drains.

A backlog of regular orders (priority 5) is published first; a consumer with a handler of `handler_ms` starts
draining it; after a warm-up (so that whatever tunes itself has settled) VIP orders (effective priority 0, the top
broker priority) are published one by one, `vip_interval` apart. For each VIP: the wait from its publish to its
handler's start, and the number of regular orders whose handler started in between. The regular throughput is
measured over the same stretch, from the first VIP's publish to the last VIP's start. A run in which the backlog
ran dry before the last VIP started is inconclusive: it says nothing about priority under a backlog.

The same workload runs through orderlane's Consumer, through raw aio-pika consumers, and (bench/peers.py) through
the libraries users would pick instead. One row runs orderlane as a user does, with the VIP orders posted over
HTTP to `python -m api` (one kept-alive connection, from a client process: bench/poster.py), each timed from just
before its POST; another does the same with the status store off, which shows what the store's reservation adds
to the VIP's wait. For orderlane's rows the VIPs' path is also timed step by step (bench/steps.py).
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from prometheus_client import CollectorRegistry

from bench.intake import PROJECT_ROOT, serving_api
from bench.steps import Steps, median_steps, stamps, summarize_steps
from bench.workload import Address, addressed, bench_channel, bench_settings, delete_queues, fill, orders
from broker.connection import open_broker
from broker.messages import Order, decode_order, encode_order
from broker.settings import Settings
from broker.status_store import open_status_store
from broker.topology import build_topology
from consumers.delivery import Delivery, current_delivery
from consumers.runner import Consumer

VIP_PREFIX = "vip"


@dataclass
class Timeline:
    """When each handler started, in order, and when each VIP was published (or posted). The run ends once every
    VIP has started: what is left of the backlog then says nothing more about priority. Where the handler knows its
    delivery (orderlane's), each VIP's path is stamped too."""

    vips: int
    started: list[tuple[str, float]] = field(default_factory=list)
    vip_published: dict[str, float] = field(default_factory=dict)
    vip_posted_at: dict[str, float] = field(default_factory=dict)
    """Wall-clock time just before each VIP's POST (VIPs posted over HTTP only)."""
    vip_deliveries: list[tuple[Delivery, float]] = field(default_factory=list)
    """Each VIP's delivery as its handler saw it, and the wall-clock time its handler started."""
    vips_started: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def handler_started(self, order_id: str) -> None:
        self.started.append((order_id, time.perf_counter()))
        if order_id.startswith(VIP_PREFIX):
            self.vips_started += 1
            if self.vips_started == self.vips:
                self.done.set()

    def vip_delivered(self) -> None:
        """Called by a VIP's handler as it starts: the steps of its path, as its delivery says."""
        self.vip_deliveries.append((current_delivery(), time.time()))


RunConsumer = Callable[[Settings, Timeline, float], Coroutine[Any, Any, None]]
Send = Callable[[Order], Awaitable[None]]
"""Sends one VIP order; the timeline gets the time taken just before it went."""


@dataclass(frozen=True, slots=True)
class System:
    name: str
    consume: RunConsumer
    settings: dict[str, object] = field(default_factory=dict)
    """Settings overrides: the prefetch a raw consumer uses, lanes."""
    address: Address = addressed
    over_http: bool = False
    """False: the VIPs are published straight to the broker. True: `python -m api` serves on a free port (at the
    settings' defaults, its status store as the settings say) and each VIP is POSTed to it over one kept-alive
    connection."""


@dataclass(frozen=True, slots=True)
class PriorityResult:
    system: str
    handler_ms: float
    backlog: int
    vips: int
    wait_p50_ms: float
    wait_max_ms: float
    overtaken_mean: float
    overtaken_max: int
    regular_per_second: float
    conclusive: bool
    """The backlog outlasted the last VIP: regular orders were still waiting when it started."""
    steps: Steps | None = None
    """The VIPs' path step by step (orderlane's consumer only)."""


def summarize(system: str, handler_ms: float, backlog: int, timeline: Timeline) -> PriorityResult:
    position = {order_id: index for index, (order_id, _) in enumerate(timeline.started)}
    start_time = dict(timeline.started)
    waits, overtaken = [], []
    for vip, published in timeline.vip_published.items():
        waits.append((start_time[vip] - published) * 1000)
        overtaken.append(
            sum(
                1
                for order_id, started in timeline.started[: position[vip]]
                if not order_id.startswith(VIP_PREFIX) and started > published
            )
        )
    first_publish = min(timeline.vip_published.values())
    last_vip = max(start_time[vip] for vip in timeline.vip_published)
    regular_before_last_vip = {
        order_id for order_id, started in timeline.started if not order_id.startswith(VIP_PREFIX) and started < last_vip
    }
    during = sum(
        1
        for order_id, started in timeline.started
        if not order_id.startswith(VIP_PREFIX) and first_publish <= started <= last_vip
    )
    return PriorityResult(
        system=system,
        handler_ms=handler_ms,
        backlog=backlog,
        vips=len(waits),
        wait_p50_ms=statistics.median(waits),
        wait_max_ms=max(waits),
        overtaken_mean=statistics.fmean(overtaken),
        overtaken_max=max(overtaken),
        regular_per_second=during / (last_vip - first_publish),
        conclusive=len(regular_before_last_vip) < backlog,
        steps=summarize_steps(
            [stamps(timeline.vip_posted_at.get(d.order_id), d, started) for d, started in timeline.vip_deliveries]
        )
        if timeline.vip_deliveries
        else None,
    )


def median_result(rounds: Sequence[PriorityResult]) -> PriorityResult:
    """One system's rounds as one row: the median of each measure; conclusive only if every round was."""
    first = rounds[0]
    return PriorityResult(
        system=first.system,
        handler_ms=first.handler_ms,
        backlog=first.backlog,
        vips=first.vips,
        wait_p50_ms=statistics.median(r.wait_p50_ms for r in rounds),
        wait_max_ms=statistics.median(r.wait_max_ms for r in rounds),
        overtaken_mean=statistics.median(r.overtaken_mean for r in rounds),
        overtaken_max=max(r.overtaken_max for r in rounds),
        regular_per_second=statistics.median(r.regular_per_second for r in rounds),
        conclusive=all(r.conclusive for r in rounds),
        steps=median_steps([r.steps for r in rounds if r.steps is not None]) if first.steps else None,
    )


@asynccontextmanager
async def published(system: System, settings: Settings, timeline: Timeline) -> AsyncIterator[Send]:
    """VIPs published straight to the broker, as the API would publish them."""
    topology = build_topology(settings)
    async with bench_channel(settings) as channel:

        async def send(vip: Order) -> None:
            message, queue = system.address(settings, topology, vip)
            timeline.vip_published[vip.order_id] = time.perf_counter()
            await channel.default_exchange.publish(message, routing_key=queue)

        yield send


@asynccontextmanager
async def posted(settings: Settings, timeline: Timeline) -> AsyncIterator[Send]:
    """VIPs posted over HTTP to `python -m api` by a client process (bench/poster.py) over one kept-alive
    connection; each must be accepted. `send` returns once its POST was answered."""
    port = free_port()  # not a fixed one: other scenarios' APIs may be serving on theirs
    async with serving_api(settings, port):
        poster = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "bench.poster", str(port)),
            cwd=PROJECT_ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert poster.stdin is not None and poster.stdout is not None
        lines, answers = poster.stdin, poster.stdout

        async def answer() -> list[str]:
            line = await answers.readline()
            if not line:
                raise RuntimeError(f"bench.poster ended (exit status {await poster.wait()})")
            return line.decode().split()

        async def send(vip: Order) -> None:
            lines.write(encode_order(vip) + b"\n")
            await lines.drain()
            order_id, wall, perf = await answer()
            timeline.vip_posted_at[order_id] = float(wall)
            timeline.vip_published[order_id] = float(perf)

        try:
            assert await answer() == ["ready"]
            yield send
        finally:
            lines.close()
            await poster.wait()


def vip_intake(system: System, settings: Settings, timeline: Timeline) -> AbstractAsyncContextManager[Send]:
    return posted(settings, timeline) if system.over_http else published(system, settings, timeline)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def inject_vips(send: Send, count: int, interval: float, warmup: float) -> None:
    await asyncio.sleep(warmup)
    for vip in orders(count, user_type="vip", prefix=VIP_PREFIX):
        await asyncio.sleep(interval)
        await send(vip)


def recording_handler(timeline: Timeline, handler_seconds: float) -> Callable[[Order], Coroutine[Any, Any, None]]:
    async def handler(order: Order) -> None:
        timeline.handler_started(order.order_id)
        if order.order_id.startswith(VIP_PREFIX):
            timeline.vip_delivered()
        await asyncio.sleep(handler_seconds)

    return handler


async def orderlane_consumer(settings: Settings, timeline: Timeline, handler_seconds: float) -> None:
    """orderlane's Consumer as `python -m consumers` runs it: with the status store the settings name (the
    default), which records each order's transitions. It runs on the benchmark's loop, asyncio's, beside raw aio-pika
    and the peers; `python -m consumers` runs on uvloop."""
    async with open_status_store(settings, CollectorRegistry()) as status, open_broker(settings) as broker:
        consumer = Consumer(broker, recording_handler(timeline, handler_seconds), settings, status=status)
        await consumer.start()
        await timeline.done.wait()
        await consumer.stop(grace_seconds=0)


async def raw_consumer(settings: Settings, timeline: Timeline, handler_seconds: float) -> None:
    """aio-pika alone, as its documentation shows: a channel per lane at the lane's prefetch (or the settings'),
    a task per delivery, validate, handle, ack."""
    connection = await aio_pika.connect(str(settings.amqp_url))
    async with connection:

        async def on_message(message: AbstractIncomingMessage) -> None:
            order = decode_order(message.body, Order)
            timeline.handler_started(order.order_id)
            await asyncio.sleep(handler_seconds)
            await message.ack()

        for lane in build_topology(settings).lanes:
            channel = await connection.channel()
            prefetch = lane.prefetch or settings.prefetch
            assert isinstance(prefetch, int), "raw aio-pika has no automatic prefetch"
            await channel.set_qos(prefetch_count=prefetch)
            queue = await channel.get_queue(lane.work.name)
            await queue.consume(on_message)
        await timeline.done.wait()


SYSTEMS = (
    System("orderlane", orderlane_consumer),  # its defaults: two lanes, high:0-2 and default:3-9
    System("orderlane, VIPs over HTTP", orderlane_consumer, over_http=True),  # as a user runs it
    # The same without the status store: the share of the VIP's wait its reservation (and record) take
    System("orderlane, VIPs over HTTP, status store off", orderlane_consumer, {"status_url": None}, over_http=True),
    System("orderlane one queue", orderlane_consumer, {"lanes": ""}),
    System("raw p10", raw_consumer, {"prefetch": 10}),
    System("raw p50", raw_consumer, {"prefetch": 50}),
    System("raw p200", raw_consumer, {"prefetch": 200}),
    System("raw two queues", raw_consumer, {"lanes": "high:0-2:10,default:3-9:50"}),
)


async def measure_rounds(
    systems: Sequence[System],
    handler_ms: float,
    backlog: int,
    vips: int,
    vip_interval: float,
    warmup: float,
    rounds: int,
    ran: Callable[[], object],
) -> list[PriorityResult]:
    """Every system on the same workload, the rounds interleaved; per system the median of each measure."""
    runs: dict[str, list[PriorityResult]] = {system.name: [] for system in systems}
    for _ in range(rounds):
        for system in systems:
            runs[system.name].append(await measure_priority(system, handler_ms, backlog, vips, vip_interval, warmup))
            ran()
    return [median_result(found) for found in runs.values()]


async def measure_priority(
    system: System, handler_ms: float, backlog: int, vips: int, vip_interval: float, warmup: float
) -> PriorityResult:
    settings = bench_settings(**system.settings)
    timeline = Timeline(vips=vips)
    try:
        async with open_broker(settings):
            await fill(settings, orders(backlog), system.address)
        async with vip_intake(system, settings, timeline) as send:  # the API is up before the backlog drains
            consuming = asyncio.create_task(system.consume(settings, timeline, handler_ms / 1000))
            try:
                await inject_vips(send, vips, vip_interval, warmup)
                async with asyncio.timeout(600):
                    await consuming
            finally:
                consuming.cancel()
    finally:
        await delete_queues(settings)
    return summarize(system.name, handler_ms, backlog, timeline)
