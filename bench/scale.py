"""Scale: throughput with more processes, against one process in the same run (issue #12).

- consumers: 1, 2 and 4 `python -m consumers` processes on one queue, each with the built-in handler and
  `ORDERLANE_SIMULATED_WORK_MS=20` (an `asyncio.sleep`: I/O-bound, no CPU) at a fixed `--concurrency 8 --prefetch 8`,
  so that one process cannot take the whole load: its ceiling is 8 handlers / 20 ms = 400 orders/s. Each run fills
  a queue of its own with a backlog that outlasts the window at the ceiling (the processes' ceiling over the window
  and START_ALLOWANCE_SECONDS), starts the processes, waits until every one serves its metrics (it consumes right
  after) and WARMUP_SECONDS more, then counts the orders all of them handled (their metrics) over the window.
  `left`: the orders not handled when the window closed; more than the processes can hold means orders were still
  ready in the queue all through it. The status store is at its default (on), as `python -m consumers` runs.
- API: `python -m api` and `python -m api --workers 2` under wrk at 32 clients, a new order per request, the status
  store at its default (on): bench/peer_intake.py's runs of those two intakes, every 2xx checked in the queue after.

The rounds interleave the process counts (1, 2, 4, then the API's 1, 2; again); per count, the medians; the ratio
is a count's median against one process's median, of the same run.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

import httpx

from bench.intake import wait_ready
from bench.peer_intake import CLIENTS, INTAKES, IntakeRun, intake_run
from bench.sharing import running_consumers
from bench.workload import bench_settings, delete_queues, fill, metric_totals, orders
from broker.connection import open_broker

HANDLER_MS: Final = 20.0
CONCURRENCY: Final = 8
"""Per process, handlers at once and deliveries held (the prefetch): fixed, no `auto` tuning."""
CONSUMER_OPTIONS: Final = ("--concurrency", str(CONCURRENCY), "--prefetch", str(CONCURRENCY))
CEILING_PER_PROCESS: Final = CONCURRENCY / (HANDLER_MS / 1000)
WARMUP_SECONDS: Final = 1.0
START_ALLOWANCE_SECONDS: Final = 5.0
"""Backlog beyond the window, at the ceiling: for the processes that start first, and the warm-up."""
FIRST_METRICS_PORT: Final = 9320
PROCESSED: Final = "orderlane_orders_processed_total"
API_INTAKES: Final = {1: INTAKES["orderlane (python -m api)"], 2: INTAKES["orderlane --workers 2"]}
"""API processes: `python -m api`, then with `--workers 2`."""


@dataclass(frozen=True, slots=True)
class ConsumerRun:
    per_second: float
    left: int
    """Orders of the backlog not handled when the window closed."""
    outlasted: bool
    """Orders were still ready in the queue when the window closed: `left` was more than the processes hold."""


Run = TypeVar("Run", ConsumerRun, IntakeRun)


@dataclass(frozen=True, slots=True)
class Scaled(Generic[Run]):
    processes: int
    per_second: float
    """The median of the runs."""
    ratio: float
    """Against one process's median, in the same run."""
    runs: tuple[Run, ...]


@dataclass(frozen=True, slots=True)
class ScaleResult:
    consumers: tuple[Scaled[ConsumerRun], ...]
    api: tuple[Scaled[IntakeRun], ...]
    handler_ms: float = HANDLER_MS
    concurrency: int = CONCURRENCY
    """Per consumer process, handlers at once and deliveries held."""
    clients: int = CLIENTS
    """wrk's connections to the API."""

    @property
    def ceiling_per_process(self) -> float:
        return self.concurrency / (self.handler_ms / 1000)


async def handled(client: httpx.AsyncClient, ports: Sequence[int]) -> float:
    totals = await asyncio.gather(*(metric_totals(client, port, (PROCESSED,)) for port in ports))
    return sum(total[PROCESSED] for total in totals)


async def consumer_run(processes: int, seconds: float) -> ConsumerRun:
    settings = bench_settings()
    ports = [FIRST_METRICS_PORT + n for n in range(processes)]
    backlog = round(processes * CEILING_PER_PROCESS * (seconds + START_ALLOWANCE_SECONDS))
    try:
        async with open_broker(settings):
            await fill(settings, orders(backlog))
        async with (
            running_consumers(settings, HANDLER_MS, ports, CONSUMER_OPTIONS),
            httpx.AsyncClient() as client,
        ):
            for port in ports:
                await wait_ready(port, "/metrics")
            await asyncio.sleep(WARMUP_SECONDS)
            first, began = await handled(client, ports), time.perf_counter()
            await asyncio.sleep(seconds)
            last, ended = await handled(client, ports), time.perf_counter()
    finally:
        await delete_queues(settings)
    left = backlog - int(last)
    return ConsumerRun((last - first) / (ended - began), left, outlasted=left > processes * CONCURRENCY)


async def measure_scale(
    processes: Sequence[int], seconds: float, rounds: int, ran: Callable[[], object]
) -> ScaleResult:
    """`rounds` rounds of a consumer run per count in `processes` (1 among them) and an API run per count of
    API_INTAKES, each `seconds` long; `ran` is called after each run."""
    consumer_runs: dict[int, list[ConsumerRun]] = {count: [] for count in processes}
    api_runs: dict[int, list[IntakeRun]] = {count: [] for count in API_INTAKES}
    for _ in range(rounds):
        for count in processes:
            consumer_runs[count].append(await consumer_run(count, seconds))
            ran()
        for count, intake in API_INTAKES.items():
            api_runs[count].append(await intake_run(intake, seconds))
            ran()
    return ScaleResult(
        scaled(consumer_runs, lambda run: run.per_second), scaled(api_runs, lambda run: run.throughput.per_second)
    )


def scaled(runs: dict[int, list[Run]], rate: Callable[[Run], float]) -> tuple[Scaled[Run], ...]:
    """Per process count (1 among them), the median rate of its runs and its ratio to one process's."""
    medians = {count: statistics.median(rate(run) for run in found) for count, found in runs.items()}
    return tuple(
        Scaled(count, medians[count], medians[count] / medians[1], tuple(found)) for count, found in runs.items()
    )
