"""Priority: how long a VIP order waits behind a backlog, and how many regular orders overtake it.

A backlog of regular orders (priority 5) is published first; a consumer with a handler of `handler_ms` starts
draining it; then VIP orders (effective priority 0, the top broker priority) are published one by one,
`vip_interval` apart. For each VIP: the wait from its publish to its handler's start, and the number of regular
orders whose handler started in between (they were already prefetched, or were ahead in the consumer). The same
workload runs through orderlane's Consumer and through a raw aio-pika consumer at the same prefetch.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from bench.workload import addressed, bench_channel, bench_settings, delete_queues, fill, orders, raw_queue
from broker.connection import open_broker
from broker.messages import Order
from broker.settings import Prefetch, Settings
from broker.topology import build_topology
from consumers.metrics import ConsumerMetrics
from consumers.runner import lane_consumers

VIP_PREFIX = "vip"


@dataclass
class Timeline:
    """When each handler started, in order, and when each VIP was published. The run ends once every VIP has
    started: what is left of the backlog then says nothing more about priority."""

    vips: int
    started: list[tuple[str, float]] = field(default_factory=list)
    vip_published: dict[str, float] = field(default_factory=dict)
    vips_started: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def handler_started(self, order_id: str) -> None:
        self.started.append((order_id, time.perf_counter()))
        if order_id.startswith(VIP_PREFIX):
            self.vips_started += 1
            if self.vips_started == self.vips:
                self.done.set()


@dataclass(frozen=True, slots=True)
class PriorityResult:
    consumer: str
    prefetch: Prefetch
    handler_ms: float
    backlog: int
    vips: int
    wait_p50_ms: float
    wait_p99_ms: float
    wait_max_ms: float
    overtaken_mean: float
    overtaken_max: int
    met_backlog: int
    regular_per_second: float


def summarize(consumer: str, prefetch: Prefetch, handler_ms: float, backlog: int, timeline: Timeline) -> PriorityResult:
    position = {order_id: index for index, (order_id, _) in enumerate(timeline.started)}
    start_time = dict(timeline.started)
    waits, overtaken = [], []
    met_backlog = 0
    for vip, published in timeline.vip_published.items():
        waits.append((start_time[vip] - published) * 1000)
        overtakers = sum(
            1
            for order_id, started in timeline.started[: position[vip]]
            if not order_id.startswith(VIP_PREFIX) and started > published
        )
        overtaken.append(overtakers)
        regular_before = sum(
            1 for order_id, started in timeline.started if not order_id.startswith(VIP_PREFIX) and started <= published
        )
        met_backlog += regular_before < backlog  # regular orders were still waiting when the VIP came
    last_vip = max(start_time[vip] for vip in timeline.vip_published)
    regular_times = [
        started for order_id, started in timeline.started if not order_id.startswith(VIP_PREFIX) and started <= last_vip
    ]
    cuts = statistics.quantiles(waits, n=100, method="inclusive") if len(waits) > 1 else waits * 99
    return PriorityResult(
        consumer=consumer,
        prefetch=prefetch,
        handler_ms=handler_ms,
        backlog=backlog,
        vips=len(waits),
        wait_p50_ms=statistics.median(waits),
        wait_p99_ms=cuts[98],
        wait_max_ms=max(waits),
        overtaken_mean=statistics.fmean(overtaken),
        overtaken_max=max(overtaken),
        met_backlog=met_backlog,
        regular_per_second=len(regular_times) / (max(regular_times) - min(regular_times)),
    )


async def inject_vips(settings: Settings, timeline: Timeline, count: int, interval: float) -> None:
    topology = build_topology(settings)
    async with bench_channel(settings) as channel:
        for vip in orders(count, user_type="vip", prefix=VIP_PREFIX):
            await asyncio.sleep(interval)
            message, queue = addressed(settings, topology, vip)
            timeline.vip_published[vip.order_id] = time.perf_counter()
            await channel.default_exchange.publish(message, routing_key=queue)


RunConsumer = Callable[[Settings, Timeline, float], Coroutine[Any, Any, None]]


async def orderlane_consumer(settings: Settings, timeline: Timeline, handler_seconds: float) -> None:
    async def handler(order: Order) -> None:
        timeline.handler_started(order.order_id)
        await asyncio.sleep(handler_seconds)

    async with open_broker(settings) as broker:
        consumers = lane_consumers(broker, handler, settings, prefetch=settings.prefetch, metrics=ConsumerMetrics())
        for consumer in consumers:
            await consumer.start()
        await timeline.done.wait()
        await asyncio.gather(*(consumer.stop(grace_seconds=0) for consumer in consumers))


async def raw_consumer(settings: Settings, timeline: Timeline, handler_seconds: float) -> None:
    async with raw_queue(settings) as queue:

        async def on_message(message: AbstractIncomingMessage) -> None:
            order = Order.model_validate_json(message.body)
            timeline.handler_started(order.order_id)
            await asyncio.sleep(handler_seconds)
            await message.ack()

        await queue.consume(on_message)
        await timeline.done.wait()


CONSUMERS: dict[str, RunConsumer] = {"orderlane": orderlane_consumer, "raw": raw_consumer}


async def measure_priority(
    consumer: str,
    prefetch: Prefetch,
    handler_ms: float,
    backlog: int,
    vips: int,
    vip_interval: float,
    lanes: str = "",
) -> PriorityResult:
    """`lanes` (ORDERLANE_LANES syntax) splits the queue; `prefetch` is then the lanes' default."""
    settings = bench_settings(prefetch=prefetch, lanes=lanes)
    timeline = Timeline(vips=vips)
    try:
        async with open_broker(settings):
            await fill(settings, orders(backlog))
        consuming = asyncio.create_task(CONSUMERS[consumer](settings, timeline, handler_ms / 1000))
        await inject_vips(settings, timeline, vips, vip_interval)
        async with asyncio.timeout(600):
            await consuming
    finally:
        await delete_queues(settings)
    return summarize(f"{consumer}+lanes" if lanes else consumer, prefetch, handler_ms, backlog, timeline)
