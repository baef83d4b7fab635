"""Drain: how fast one consumer empties a backlog, orderlane's Consumer beside a raw aio-pika consumer.

Both validate each body with the same pydantic model and ack after the handler; the handler itself does nothing,
so what is measured is the consumer's own cost per message at a given prefetch. orderlane runs with the concurrency
equal to the prefetch, as raw aio-pika does, and at its defaults (`auto` for both), beside raw aio-pika at its
best prefetch of the run. Without the status store: what it costs is bench/status.py's to measure, which also drains
behind a handler that takes a while (`orderlane_drain`'s `handler_seconds`).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

from aio_pika.abc import AbstractIncomingMessage

from bench.cpu import CpuMeter
from bench.workload import bench_settings, delete_queues, fill, orders, raw_queue, timed
from broker.connection import open_broker
from broker.messages import Order
from broker.settings import Prefetch, Settings
from broker.status_store import open_status_store
from consumers.metrics import ConsumerMetrics
from consumers.runner import Consumer


@dataclass(frozen=True, slots=True)
class DrainResult:
    prefetch: Prefetch
    messages: int
    orderlane_per_second: float
    raw_per_second: float | None
    """None for `auto`: raw aio-pika has no automatic prefetch (compare with its best row)."""

    @property
    def ratio(self) -> float | None:
        return self.orderlane_per_second / self.raw_per_second if self.raw_per_second else None


@dataclass(frozen=True, slots=True)
class Drained:
    per_second: float
    cpu_us: dict[str, float]
    """Microseconds of CPU per order while it drained (bench/cpu.py): this process's (the consumer's), Redis's, the
    broker's."""


class Stretch:
    """The part of a drain that is measured: from the `first`-th order handled (0: from the consumer's start, which
    the drain marks with `begin`) to the `last`-th."""

    def __init__(self, first: int, last: int) -> None:
        self._first = first
        self._last = last
        self._meter = CpuMeter(os.getpid())  # finds the processes now: /proc is walked outside the stretch
        self._started = time.perf_counter()
        self.measured: Drained | None = None

    def begin(self) -> None:
        self._meter.restart()
        self._started = time.perf_counter()

    def handled(self, nth: int) -> None:
        """The `nth` order's handler starts."""
        if nth == self._first:
            self.begin()
        elif nth == self._last:
            orders = self._last - self._first
            self.measured = Drained(orders / (time.perf_counter() - self._started), self._meter.per_order(orders))


async def orderlane_drain(
    settings: Settings, count: int, handler_seconds: float = 0.0, *, settled: bool = False
) -> Drained:
    """orderlane's Consumer on a backlog of `count`, with the status store the settings name (as
    `python -m consumers` opens it) or none, each handler taking `handler_seconds`. `settled`: measured over the
    middle half of the backlog only (from a quarter handled to three quarters), once whatever tunes itself has
    ramped up and before the backlog runs low; otherwise (and for fewer than 4 orders) over the whole drain. It
    drains to the end either way."""
    metrics = ConsumerMetrics()
    stretch = Stretch(count // 4, count * 3 // 4) if settled and count >= 4 else Stretch(0, count)
    async with open_status_store(settings, metrics.registry) as status, open_broker(settings) as broker:
        await fill(settings, orders(count))
        handled = 0
        all_handled = asyncio.Event()

        async def handler(order: Order) -> None:
            nonlocal handled
            handled += 1
            stretch.handled(handled)
            if handled == count:
                all_handled.set()
            if handler_seconds:
                await asyncio.sleep(handler_seconds)

        consumer = Consumer(broker, handler, settings, metrics=metrics, status=status)
        stretch.begin()
        await consumer.start()
        await all_handled.wait()
        await consumer.stop(grace_seconds=10)
    assert stretch.measured is not None, "the stretch ends at the latest with the last order"
    return stretch.measured


async def raw_drain(settings: Settings, count: int) -> float:
    """The same backlog in the same queue, consumed with aio-pika alone."""
    async with open_broker(settings):  # declares the same queue
        await fill(settings, orders(count))
    async with raw_queue(settings) as queue:
        handled = 0
        all_handled = asyncio.Event()

        async def on_message(message: AbstractIncomingMessage) -> None:
            nonlocal handled
            Order.model_validate_json(message.body)
            await message.ack()
            handled += 1
            if handled == count:
                all_handled.set()

        async def drain() -> None:
            await queue.consume(on_message)
            await all_handled.wait()

        elapsed = await timed(drain)
    return count / elapsed


async def measure_drain(prefetch: Prefetch, count: int, rounds: int) -> DrainResult:
    """Alternate the two, `rounds` times each, and keep the best of each (the least disturbed by the machine)."""
    ours: list[float] = []
    raw: list[float] = []

    async def orderlane(settings: Settings, count: int) -> float:
        return (await orderlane_drain(settings, count)).per_second

    runs = ((orderlane, ours), (raw_drain, raw)) if prefetch != "auto" else ((orderlane, ours),)
    for _ in range(rounds):
        for run, results in runs:
            settings = bench_settings(prefetch=prefetch, concurrency=prefetch, status_url=None)
            try:
                results.append(await run(settings, count))
            finally:
                await delete_queues(settings)
    return DrainResult(prefetch, count, max(ours), max(raw) if raw else None)
