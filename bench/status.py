"""Status: what the order status store (Redis, ORDERLANE_STATUS_URL) costs intake, drain and priority, off against
on, in the same run.

- intake: `python -m api` under wrk (bench/intake.py) at CLIENTS connections. With the store on, each POST reserves
  its order_id before the publish and marks it accepted after the broker's confirm.
- drain: a backlog of persistent orders drained by orderlane's Consumer at its defaults (bench/drain.py). With the
  store on, each order is recorded `processed` (and `processing`, if its handler runs long enough to show it)
  before its ack. Twice: with a handler that does nothing, over the whole drain (the consumer's own cost); and as
  issue #21's target has it, the priority scenario's backlog (40,000 orders) behind its 5 ms handler, over the
  middle half of the backlog (after the automatic tuning's ramp, before the backlog runs low).
- priority: orderlane at its defaults (two lanes) in the priority scenario (bench/priority.py): regular orders/s and
  how long the VIP orders waited.

Each run has a queue of its own, hence a status namespace (`orderlane:<queue>:`) of its own: every order_id is new
to the store, so every POST publishes (post.lua numbers the orders of each wrk run from 1) and every record is
written afresh. What would make a run unfair is counted as `unexpected`, 0 in a fair one: answers other than 2xx,
wrk's timeouts, and with the store on, posts answered from the store (a repeated order_id), orders published
without asking it (it was away), orders the consumer left without a record.

Intake and drain also say what each order cost in CPU (bench/cpu.py): the process under test (the API; the
benchmark's own process, where the consumer runs), Redis, and the broker, each in microseconds per order.

The rounds alternate off and on, which of the two goes first swapping from one round to the next; per path and
setting, the median of the rounds.
"""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import httpx

from bench.cpu import CpuMeter
from bench.drain import orderlane_drain
from bench.intake import run_wrk, serving_api
from bench.priority import System, measure_priority, orderlane_consumer
from bench.workload import bench_settings, delete_queues, metric_totals, status_records
from broker.settings import Settings

CLIENTS: Final = 32
PORT: Final = 8767
ANSWERED_BY_THE_STORE: Final = ("orderlane_orders_deduplicated_total", "orderlane_orders_without_dedup_total")
"""The API's counts of posts that did not go through the store as a new order_id does."""


@dataclass(frozen=True, slots=True)
class Run:
    per_second: float
    latency_ms: tuple[float, float] | None
    """p50 and p99, intake only."""
    unexpected: int
    cpu_us: dict[str, float] = field(default_factory=dict)
    """Microseconds of CPU per order (bench/cpu.py): the process under test's (`process`: the API, or the
    consumer), Redis's and the broker's; intake and drain only."""


@dataclass(frozen=True, slots=True)
class Side:
    """The store off or on, over the rounds: the medians, and each round's orders/s."""

    per_second: float
    p50_ms: float | None
    p99_ms: float | None
    rounds: tuple[float, ...]
    unexpected: int
    cpu_us: dict[str, float]
    """The median of each over the rounds."""


@dataclass(frozen=True, slots=True)
class StatusResult:
    path: str
    """What was measured: `intake, 32 clients, 5 s`, `drain, 20,000 orders` or `priority, ...`."""
    off: Side
    on: Side

    @property
    def ratio(self) -> float:
        return self.on.per_second / self.off.per_second


Measure = Callable[[Settings], Awaitable[Run]]


def store_settings(store: bool) -> Settings:
    """Settings on a new queue: with the status store the environment names, or without one."""
    if not store:
        return bench_settings(status_url=None)
    settings = bench_settings()
    if settings.status_url is None:
        raise SystemExit("bench: the status scenario needs a status store, and ORDERLANE_STATUS_URL is empty")
    return settings


def intake_measure(seconds: float) -> Measure:
    async def measure(settings: Settings) -> Run:
        async with serving_api(settings, PORT) as api:
            meter = CpuMeter(api.pid)
            wrk = await run_wrk(CLIENTS, seconds, PORT)
            cpu_us = meter.per_order(wrk.requests)
            async with httpx.AsyncClient() as client:
                answered = await metric_totals(client, PORT, ANSWERED_BY_THE_STORE)
        return Run(wrk.per_second, (wrk.p50_ms, wrk.p99_ms), wrk.errors + int(sum(answered.values())), cpu_us)

    return measure


def drain_measure(count: int, handler_ms: float = 0, *, settled: bool = False) -> Measure:
    """orderlane's Consumer at its defaults on a backlog of `count`, each handler taking `handler_ms`; `settled`:
    measured over the middle half of the backlog (bench.drain.orderlane_drain)."""

    async def measure(settings: Settings) -> Run:
        drained = await orderlane_drain(settings, count, handler_ms / 1000, settled=settled)
        missing = count - await status_records(settings) if settings.status_url else 0
        return Run(drained.per_second, None, abs(missing), drained.cpu_us)

    return measure


def priority_measure(handler_ms: float, backlog: int, vips: int, vip_interval: float, warmup: float) -> Measure:
    """orderlane at its defaults (two lanes) in the priority scenario, with the store as the settings say: regular
    orders/s, and the VIP wait (p50, max) in the latency columns."""

    async def measure(settings: Settings) -> Run:
        overrides: dict[str, object] = {} if settings.status_url else {"status_url": None}
        system = System("orderlane", orderlane_consumer, overrides)
        result = await measure_priority(system, handler_ms, backlog, vips, vip_interval, warmup)
        return Run(result.regular_per_second, (result.wait_p50_ms, result.wait_max_ms), int(not result.conclusive))

    return measure


async def measure_status(path: str, measure: Measure, rounds: int, ran: Callable[[], object]) -> StatusResult:
    """`rounds` runs of each setting, interleaved; `ran` is called after each run."""
    runs: dict[bool, list[Run]] = {False: [], True: []}
    for round_number in range(rounds):
        for store in (False, True) if round_number % 2 == 0 else (True, False):
            settings = store_settings(store)
            try:
                runs[store].append(await measure(settings))
            finally:
                await delete_queues(settings)
            ran()
    return StatusResult(path, side(runs[False]), side(runs[True]))


def side(runs: Sequence[Run]) -> Side:
    latencies = [run.latency_ms for run in runs if run.latency_ms is not None]
    return Side(
        per_second=statistics.median(run.per_second for run in runs),
        p50_ms=statistics.median(p50 for p50, _ in latencies) if latencies else None,
        p99_ms=statistics.median(p99 for _, p99 in latencies) if latencies else None,
        rounds=tuple(run.per_second for run in runs),
        unexpected=sum(run.unexpected for run in runs),
        cpu_us={what: statistics.median(run.cpu_us[what] for run in runs) for what in runs[0].cpu_us},
    )
