"""Memory: the consumer's resident set while it drains 100,000 orders, sampled every 10,000; it must stay flat."""

from __future__ import annotations

import asyncio
import resource
from dataclasses import dataclass
from pathlib import Path

from bench.workload import bench_settings, delete_queues, fill, orders
from broker.connection import open_broker
from broker.messages import Order
from consumers.runner import Consumer

PAGE = resource.getpagesize()
BATCH = 10_000


def rss_megabytes() -> float:
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * PAGE / 2**20


@dataclass(frozen=True, slots=True)
class MemoryResult:
    messages: int
    rss_mb: tuple[float, ...]
    """After each batch of 10,000 orders, the first taken once the consumer has warmed up."""

    @property
    def growth_mb(self) -> float:
        return self.rss_mb[-1] - self.rss_mb[0]


async def measure_memory(messages: int) -> MemoryResult:
    """At the default (automatic) prefetch and concurrency."""
    settings = bench_settings()
    samples: list[float] = []
    try:
        async with open_broker(settings) as broker:
            handled = 0
            batch_done = asyncio.Event()

            async def handler(order: Order) -> None:
                nonlocal handled
                handled += 1
                if handled % BATCH == 0:
                    batch_done.set()

            consumer = Consumer(broker, handler, settings)
            await consumer.start()
            for _ in range(messages // BATCH):
                await fill(settings, orders(BATCH))
                await batch_done.wait()
                batch_done.clear()
                samples.append(rss_megabytes())
            await consumer.stop(grace_seconds=5)
    finally:
        await delete_queues(settings)
    return MemoryResult(messages, tuple(samples))
