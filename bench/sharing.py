"""Sharing: several consumer processes on one backlog, each at its defaults.

A process holds deliveries it has not started yet; while it holds them, no other process can take them. If one
process sat on a deep buffer, the others would stand idle at the end of the backlog while it still worked through
its own. Each `python -m consumers` process (the built-in handler with `ORDERLANE_SIMULATED_WORK_MS` of work) is
sampled through its metrics every 50 ms: orders handled, held, running. Reported per process: orders handled, the
most it held, and the time it stood idle while another process still held orders it could have run.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from bench.intake import PROJECT_ROOT
from bench.workload import bench_settings, delete_queues, environment, fill, metric_totals, orders
from broker.connection import open_broker
from broker.settings import Settings

SCRAPE_SECONDS = 0.05
FIRST_METRICS_PORT = 9310


@dataclass(frozen=True, slots=True)
class Sample:
    processed: float
    held: float
    running: float


@dataclass(frozen=True, slots=True)
class SharingResult:
    processes: int
    backlog: int
    handler_ms: float
    handled: tuple[int, ...]
    most_held: tuple[int, ...]
    idle_while_others_held_ms: tuple[float, ...]
    seconds: float

    @property
    def per_second(self) -> float:
        return sum(self.handled) / self.seconds


async def scrape(client: httpx.AsyncClient, port: int) -> Sample:
    values = await metric_totals(
        client, port, ("orderlane_orders_processed_total", "orderlane_orders_held", "orderlane_orders_in_flight")
    )
    return Sample(
        processed=values["orderlane_orders_processed_total"],
        held=values["orderlane_orders_held"],
        running=values["orderlane_orders_in_flight"],
    )


async def start_consumer(
    settings: Settings, handler_ms: float, port: int, options: Sequence[str] = ()
) -> asyncio.subprocess.Process:
    env = {
        **environment(settings),
        "ORDERLANE_SIMULATED_WORK_MS": str(handler_ms),
        "ORDERLANE_LOG_LEVEL": "WARNING",
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "consumers", "--metrics-port", str(port), *options, cwd=PROJECT_ROOT, env=env
    )


@asynccontextmanager
async def running_consumers(
    settings: Settings, handler_ms: float, ports: Sequence[int], options: Sequence[str] = ()
) -> AsyncIterator[None]:
    """A `python -m consumers` process per metrics port in `ports`, on the settings' queue, with `handler_ms` of
    simulated work per order and `options` on its command line; stopped (SIGTERM) and exited when this returns."""
    consumers: list[asyncio.subprocess.Process] = []
    try:
        for port in ports:
            consumers.append(await start_consumer(settings, handler_ms, port, options))
        yield
    finally:
        for consumer in consumers:
            consumer.send_signal(signal.SIGTERM)
        await asyncio.gather(*(consumer.wait() for consumer in consumers))


async def measure_sharing(processes: int, backlog: int, handler_ms: float) -> SharingResult:
    settings = bench_settings()
    ports = [FIRST_METRICS_PORT + n for n in range(processes)]
    timelines: list[list[Sample]] = [[] for _ in ports]
    try:
        async with open_broker(settings):
            await fill(settings, orders(backlog))
        async with running_consumers(settings, handler_ms, ports), httpx.AsyncClient() as client:
            started = time.perf_counter()
            while True:
                try:
                    samples = await asyncio.gather(*(scrape(client, port) for port in ports))
                except httpx.TransportError:  # not serving metrics yet
                    await asyncio.sleep(SCRAPE_SECONDS)
                    continue
                for timeline, sample in zip(timelines, samples, strict=True):
                    timeline.append(sample)
                if sum(sample.processed for sample in samples) >= backlog:
                    break
                await asyncio.sleep(SCRAPE_SECONDS)
            seconds = time.perf_counter() - started
    finally:
        await delete_queues(settings)
    return SharingResult(
        processes=processes,
        backlog=backlog,
        handler_ms=handler_ms,
        handled=tuple(int(timeline[-1].processed) for timeline in timelines),
        most_held=tuple(int(max(sample.held for sample in timeline)) for timeline in timelines),
        idle_while_others_held_ms=tuple(idle_while_others_held(timelines, n) * 1000 for n in range(processes)),
        seconds=seconds,
    )


def idle_while_others_held(timelines: list[list[Sample]], process: int) -> float:
    """Seconds in which `process` ran nothing and held nothing while another process held orders unstarted."""
    idle = 0.0
    for moment, sample in enumerate(timelines[process]):
        others_held = any(timeline[moment].held > 0 for n, timeline in enumerate(timelines) if n != process)
        if sample.running == 0 and sample.held == 0 and others_held:
            idle += SCRAPE_SECONDS
    return idle
