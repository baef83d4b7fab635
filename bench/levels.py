"""Levels: what a classic priority queue's `x-max-priority` costs the broker, per message, and the rates it allows.

Each round, for each number of levels (none: a queue without priorities), a fresh durable queue takes `messages`
persistent orders published with confirms, PUBLISH_WINDOW in flight, their broker priorities spread over the queue's
levels; then one consumer at prefetch 200 takes and acks them all. The broker's CPU time (beam.smp, read from /proc)
over each half, per message, is the figure to read: steadier than the rates on a shared machine. Rounds alternate
the levels, and each measure is the median of the rounds.

Why it matters: orderlane declares each lane's work queue with only the levels its orders use (broker/topology.py),
so the default lanes' regular queue has levels 0-6, not the 0-10 of ORDERLANE_MAX_PRIORITY.
"""

from __future__ import annotations

import asyncio
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import aiormq
from aiormq import spec
from aiormq.abc import DeliveredMessage
from pamqp.common import FieldValue

from bench.cpu import SERVICES, CpuMeter, local_pid
from bench.tables import table
from bench.workload import bench_channel, bench_settings, order, timed
from broker.messages import CONTENT_TYPE, encode_order

LEVELS: Final = (10, 6, 2, None)
"""ORDERLANE_MAX_PRIORITY's levels (the one queue's), the default regular lane's, three levels, and none."""
PUBLISH_WINDOW: Final = 64
PREFETCH: Final = 200
CONSUME_WITHIN: Final = 300.0
"""Seconds for the consumer to take every message back: a message missing fails the run instead of hanging it."""


@dataclass(frozen=True, slots=True)
class LevelsRun:
    publish_per_second: float
    publish_broker_us: float
    consume_per_second: float
    consume_broker_us: float


@dataclass(frozen=True, slots=True)
class LevelsResult:
    levels: int | None
    messages: int
    runs: tuple[LevelsRun, ...]

    def median(self, measure: Callable[[LevelsRun], float]) -> float:
        return statistics.median(measure(run) for run in self.runs)


async def measure_levels(messages: int, rounds: int, progress: Callable[[], object]) -> list[LevelsResult]:
    if local_pid(SERVICES["broker"]) is None:
        raise RuntimeError("the levels benchmark reads the broker's CPU time: run it on the broker's machine")
    runs: dict[int | None, list[LevelsRun]] = {levels: [] for levels in LEVELS}
    for _ in range(rounds):
        for levels in LEVELS:
            runs[levels].append(await levels_run(levels, messages))
            progress()
    return [LevelsResult(levels, messages, tuple(found)) for levels, found in runs.items()]


async def levels_run(levels: int | None, messages: int) -> LevelsRun:
    settings = bench_settings()
    queue = settings.queue
    arguments: dict[str, FieldValue] = {} if levels is None else {"x-max-priority": levels}
    async with bench_channel(settings) as channel:  # a confirm channel
        underlay = await channel.get_underlay_channel()
        assert isinstance(underlay, aiormq.Channel)  # the abstract one does not declare basic_publish's `wait`
        await underlay.queue_declare(queue, durable=True, arguments=arguments)
        try:
            meter = CpuMeter(os.getpid())
            published = await timed(lambda: publish(underlay, queue, messages, levels or 0))
            publish_cpu = meter.per_order(messages)
            meter = CpuMeter(os.getpid())
            consumed = await timed(lambda: consume(underlay, queue, messages))
            consume_cpu = meter.per_order(messages)
        finally:
            await underlay.queue_delete(queue)
    return LevelsRun(
        publish_per_second=messages / published,
        publish_broker_us=publish_cpu["broker"],
        consume_per_second=messages / consumed,
        consume_broker_us=consume_cpu["broker"],
    )


async def publish(channel: aiormq.Channel, queue: str, messages: int, top: int) -> None:
    """Persistent orders with confirms, PUBLISH_WINDOW in flight, broker priorities cycling 0..top."""
    window = asyncio.Semaphore(PUBLISH_WINDOW)

    async def one(number: int) -> None:
        properties = spec.Basic.Properties(
            content_type=CONTENT_TYPE, delivery_mode=2, priority=number % (top + 1), message_id=str(number)
        )
        async with window:
            await channel.basic_publish(
                encode_order(order(number)), routing_key=queue, properties=properties, mandatory=True, wait=False
            )

    await asyncio.gather(*(one(number) for number in range(messages)))


async def consume(channel: aiormq.Channel, queue: str, messages: int) -> None:
    """Take and ack every message at prefetch PREFETCH."""
    taken = 0
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_message(message: DeliveredMessage) -> None:
        nonlocal taken
        assert message.delivery_tag is not None
        await channel.basic_ack(message.delivery_tag)
        taken += 1
        if taken == messages and not done.done():
            done.set_result(None)

    await channel.basic_qos(prefetch_count=PREFETCH)
    consumed = await channel.basic_consume(queue, on_message)
    async with asyncio.timeout(CONSUME_WITHIN):
        await done
    assert consumed.consumer_tag is not None
    await channel.basic_cancel(consumed.consumer_tag)


def show_levels(results: Sequence[LevelsResult]) -> str:
    header = ("x-max-priority", "published/s", "broker µs/msg", "consumed/s", "broker µs/msg ", "vs 10 levels")
    top = next(result for result in results if result.levels == LEVELS[0])
    cost = top.median(lambda run: run.publish_broker_us + run.consume_broker_us)
    rows = [
        (
            "none" if result.levels is None else str(result.levels),
            result.median(lambda run: run.publish_per_second),
            result.median(lambda run: run.publish_broker_us),
            result.median(lambda run: run.consume_per_second),
            result.median(lambda run: run.consume_broker_us),
            f"{result.median(lambda run: run.publish_broker_us + run.consume_broker_us) / cost:.2f}",
        )
        for result in results
    ]
    return table(header, rows) + f"\n({results[0].messages:,} messages; broker CPU per message; medians of the rounds)"
