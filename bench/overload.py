"""Overload (issue 23): a flash sale, with priority-aware admission off and on (ORDERLANE_ADMISSION_MAX_WAIT), side
by side in one invocation.

Each run serves `python -m api` at the defaults (two lanes, the status store on; admission as the run says) and the
shop's consumer (bench/shop.py), which drains at most its `ceiling` of orders a second: modest, and known. Then, in
turn:

1. quiet: QUIET_VIPS VIP orders posted over QUIET_SECONDS and nothing else: how long a VIP waits without the flood;
2. warm-up: a backlog published straight to the lanes, drained for `warmup_seconds`, the rest purged: the
   consumer's drain rate, measured; the API's wait estimates now hold a shop busy at capacity (in a shop idle until
   the sale, the estimates' drain rate would lag behind for their first RATE_WINDOW_SECONDS);
3. the sale: orders posted at `overload` times the ceiling for `seconds`, one in VIP_EVERY of them VIP, each
   refused one posted again after its Retry-After (bench/flashsale.py). Every SAMPLE_SECONDS: the ready messages in
   the lanes (the broker's count), the API's expected wait for a regular order, the orders accepted and refused.

Once every accepted VIP has started, the consumer stops (its handlers finish) and every accepted order is looked up
in the status store: processed, or still waiting in its lane (the lanes' ready messages are counted too); what is
neither was lost. A VIP's wait runs from just before its first POST to its handler's start (the status store's
`at.processing`), both on the machine's wall clock.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import httpx
from prometheus_client import CollectorRegistry

from bench.flashsale import FlashSale, Story
from bench.intake import serving_api
from bench.plot import Line, Panel, write_svg
from bench.priority import free_port
from bench.report import RESULTS
from bench.shop import Shop, api_environment, awaited, consuming, statuses
from bench.steps import Spread
from bench.tables import table
from bench.workload import (
    bench_channel,
    bench_settings,
    delete_queues,
    fill,
    metric_totals,
    orders,
)
from broker.connection import Broker, open_broker
from broker.estimates import RATE_WINDOW_SECONDS
from broker.queues import queue_stats
from broker.settings import Settings
from broker.status_store import StatusStore, open_status_store
from broker.topology import build_topology

VIP_EVERY: Final = 100
"""1 % of the sale's orders are VIP."""
QUIET_VIPS: Final = 10
QUIET_SECONDS: Final = 1.0
SAMPLE_SECONDS: Final = 0.5
WARMUP_ALLOWANCE_SECONDS: Final = 2.0
"""The warm-up's backlog outlasts its window by this much at the ceiling: time for the first deliveries to arrive."""
VIP_START_SECONDS: Final = 30.0
"""How long the accepted VIPs may take to start once the sale is over; one still waiting then is counted."""
PROCESSED: Final = "orderlane_orders_processed_total"
GREY: Final = "#777"


@dataclass(frozen=True, slots=True)
class Sale:
    seconds: float = 60.0
    budget: float = 5.0
    """ORDERLANE_ADMISSION_MAX_WAIT of the run with admission on."""
    overload: float = 3.0
    """Orders posted a second, as a multiple of the shop's ceiling."""
    shop: Shop = field(default_factory=Shop)
    warmup_seconds: float = RATE_WINDOW_SECONDS

    @property
    def per_second(self) -> float:
        return self.overload * self.shop.ceiling


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    """Seconds since the sale began."""
    backlog: int
    """Ready messages in the lanes."""
    accepted: int
    refused: int
    expected_wait_s: float | None
    """The API's estimate for a regular order (its lane, the least urgent): what admission compares with the budget;
    None while it is not known, or infinite."""


@dataclass(frozen=True, slots=True)
class Tally:
    """Orders of one kind and how they fared."""

    posted: int
    first_try: int
    """Accepted on their first POST."""
    after_retries: int
    never: int
    """Not accepted when the sale ended: most wait out a Retry-After then."""


@dataclass(frozen=True, slots=True)
class Settled:
    """Where the accepted orders of a run were once the consumer had stopped."""

    accepted: int
    processed: int
    queued: int
    """Still waiting in their lane, as the status store says."""
    ready_in_lanes: int
    """The lanes' ready messages, as the broker says."""

    @property
    def lost(self) -> int:
        return self.accepted - self.processed - self.queued


@dataclass(frozen=True, slots=True)
class OverloadRun:
    admission_max_wait: float | None
    drain_per_second: float
    """The consumer's, measured in the warm-up."""
    posted_per_second: float
    """New orders (retries aside) posted a second, as the sale went."""
    vips: Tally
    regular: Tally
    quiet_vip_wait: Spread | None
    vip_wait: Spread | None
    """None when no VIP was accepted (or started)."""
    vips_not_started: int
    """Accepted VIPs whose handler had not started VIP_START_SECONDS after the sale."""
    backlog_max: int
    backlog_final: int
    settled: Settled
    refusals: int
    """429 answers."""
    failures: int
    """Other answers but 2xx, and POSTs that got none."""
    retries: int
    """POSTs of orders refused before."""
    retry_after_ms: Spread | None
    retry_late_ms: Spread | None
    """How long after its Retry-After each retry went out (0 or more: never before)."""
    samples: tuple[Sample, ...]
    vip_waits: tuple[tuple[float, float], ...]
    """Each started VIP's first POST (seconds since the sale began) and its wait in ms."""


@dataclass(frozen=True, slots=True)
class OverloadResult:
    sale: Sale
    off: OverloadRun
    on: OverloadRun


def spread(values: Sequence[float]) -> Spread | None:
    return Spread(statistics.median(values), max(values)) if values else None


def tally(stories: Sequence[Story]) -> Tally:
    accepted = [story for story in stories if story.accepted]
    first_try = sum(story.tries == 1 for story in accepted)
    return Tally(len(stories), first_try, len(accepted) - first_try, len(stories) - len(accepted))


async def vip_starts(store: StatusStore, stories: Sequence[Story]) -> dict[str, float]:
    """Each accepted VIP's handler start (time.time()), once all have started or VIP_START_SECONDS have passed."""
    vips = [story.order_id for story in stories if story.vip and story.accepted]
    started = await awaited(store, vips, lambda status: "processing" in status.at, VIP_START_SECONDS)
    return {order_id: status.at["processing"].timestamp() for order_id, status in started.items()}


def vip_waits(sale: FlashSale, started: dict[str, float]) -> list[tuple[float, float]]:
    """(first POST in seconds since the sale began, wait in ms) of each started VIP."""
    return [
        (story.first_posted_at - sale.started_at, (started[story.order_id] - story.first_posted_at) * 1000)
        for story in sale.stories
        if story.order_id in started and story.first_posted_at is not None
    ]


async def backlog(broker: Broker) -> int:
    return sum(stat.messages or 0 for stat in await queue_stats(broker.connection, broker.topology, work_only=True))


async def regular_wait(client: httpx.AsyncClient, port: int) -> float | None:
    """The expected wait the API on `port` shows for the least urgent lane (GET /queues)."""
    lanes = (await client.get(f"http://127.0.0.1:{port}/queues")).json()["lanes"]
    wait: float | None = lanes[-1]["expected_wait_seconds"]
    return wait


async def selling(sale: FlashSale, port: int, broker: Broker, client: httpx.AsyncClient) -> list[Sample]:
    """Run the sale, sampling the lanes, the API's estimate and the tallies every SAMPLE_SECONDS and once more at
    its end."""

    async def sample() -> Sample:
        at, ready, wait = time.time() - began, await backlog(broker), await regular_wait(client, port)
        return Sample(at, ready, sale.accepted, sale.refused, wait)

    began = time.time()
    running = asyncio.create_task(sale.run(port))
    samples = []
    while not running.done():
        samples.append(await sample())
        await asyncio.wait({running}, timeout=SAMPLE_SECONDS)
    await running  # its error, if it failed
    return [*samples, await sample()]


async def warm_up(settings: Settings, sale: Sale, client: httpx.AsyncClient, metrics_port: int) -> float:
    """A backlog that outlasts `warmup_seconds` at the ceiling, published straight to the lanes: the orders a second
    the consumer processes over that window. What is left then is purged: the sale begins with empty lanes."""
    await fill(
        settings, orders(round(sale.shop.ceiling * (sale.warmup_seconds + WARMUP_ALLOWANCE_SECONDS)), prefix="warm")
    )
    first, began = (await metric_totals(client, metrics_port, (PROCESSED,)))[PROCESSED], time.perf_counter()
    await asyncio.sleep(sale.warmup_seconds)
    last, ended = (await metric_totals(client, metrics_port, (PROCESSED,)))[PROCESSED], time.perf_counter()
    async with bench_channel(settings) as channel:
        for lane in build_topology(settings).lanes:
            await (await channel.get_queue(lane.work.name)).purge()
    return (last - first) / (ended - began)


def flash_sale(name: str, per_second: float, seconds: float, vip_every: int) -> FlashSale:
    """Retries go out at most as fast as new orders: the generator posts twice the sale's rate at most."""
    return FlashSale(name, per_second, seconds, vip_every=vip_every, retries_per_second=per_second)


async def settle(store: StatusStore, broker: Broker, stories: Sequence[Story]) -> Settled:
    accepted = [story.order_id for story in stories if story.accepted]
    states = Counter(status.state if status else None for status in await statuses(store, accepted))
    return Settled(len(accepted), states["processed"], states["accepted"], await backlog(broker))


async def run_sale(sale: Sale, admission_max_wait: float | None) -> OverloadRun:
    settings = bench_settings()
    if settings.status_url is None:
        raise SystemExit("bench: the overload scenario needs the status store, and ORDERLANE_STATUS_URL is empty")
    api_port = free_port()
    quiet = flash_sale("quiet", QUIET_VIPS / QUIET_SECONDS, QUIET_SECONDS, vip_every=1)
    flash = flash_sale("sale", sale.per_second, sale.seconds, vip_every=VIP_EVERY)
    try:
        async with (
            open_broker(settings) as broker,
            open_status_store(settings, CollectorRegistry()) as store,
            serving_api(settings, api_port, env=api_environment(settings, admission_max_wait)),
            httpx.AsyncClient() as client,
        ):
            assert store is not None
            async with consuming(settings, sale.shop) as metrics_port:
                await quiet.run(api_port)
                quiet_started = await vip_starts(store, quiet.stories)
                drain = await warm_up(settings, sale, client, metrics_port)
                samples = await selling(flash, api_port, broker, client)
                started = await vip_starts(store, flash.stories)
            settled = await settle(store, broker, flash.stories)  # the consumer has stopped
    finally:
        await delete_queues(settings)
    return summarize(admission_max_wait, drain, flash, samples, started, settled, vip_waits(quiet, quiet_started))


def summarize(
    admission_max_wait: float | None,
    drain_per_second: float,
    sale: FlashSale,
    samples: Sequence[Sample],
    started: dict[str, float],
    settled: Settled,
    quiet_waits: Sequence[tuple[float, float]],
) -> OverloadRun:
    waits = vip_waits(sale, started)
    vips = tally([story for story in sale.stories if story.vip])
    return OverloadRun(
        admission_max_wait=admission_max_wait,
        drain_per_second=drain_per_second,
        posted_per_second=len(sale.stories) / sale.seconds,
        vips=vips,
        regular=tally([story for story in sale.stories if not story.vip]),
        quiet_vip_wait=spread([wait for _, wait in quiet_waits]),
        vip_wait=spread([wait for _, wait in waits]),
        vips_not_started=vips.posted - vips.never - len(waits),
        backlog_max=max(sample.backlog for sample in samples),
        backlog_final=samples[-1].backlog,
        settled=settled,
        refusals=sale.refused,
        failures=sale.failed,
        retries=sum(story.tries - 1 for story in sale.stories),
        retry_after_ms=spread([seconds * 1000 for seconds in sale.retry_afters]),
        retry_late_ms=spread([late * 1000 for late in sale.retry_lateness]),
        samples=tuple(samples),
        vip_waits=tuple(waits),
    )


async def measure_overload(sale: Sale, ran: Callable[[], object]) -> OverloadResult:
    """The sale with admission off, then on; `ran` is called after each run."""
    off = await run_sale(sale, None)
    ran()
    on = await run_sale(sale, sale.budget)
    ran()
    return OverloadResult(sale, off, on)


def _pair(spread: Spread | None, per_ms: float = 1.0) -> str:
    """p50 / max, in ms or, with `per_ms` 1/1000, in seconds."""
    return "-" if spread is None else f"{spread.p50_ms * per_ms:,.0f} / {spread.max_ms * per_ms:,.0f}"


def _tally(tally: Tally) -> str:
    return f"{tally.posted:,}: {tally.first_try:,} / {tally.after_retries:,} / {tally.never:,}"


def _row(label: str, show: Callable[[OverloadRun], object], result: OverloadResult) -> tuple[object, ...]:
    return (label, show(result.off), show(result.on))


def show_overload(results: Sequence[OverloadResult]) -> str:
    result = results[0]
    sale = result.sale
    rows = [
        _row("consumer drain, orders/s (warm-up)", lambda run: run.drain_per_second, result),
        _row(f"new orders posted/s (target {sale.per_second:,.0f})", lambda run: run.posted_per_second, result),
        _row("VIPs posted: 202 first try / after retries / never", lambda run: _tally(run.vips), result),
        _row("VIP wait p50 / max ms, quiet (no flood)", lambda run: _pair(run.quiet_vip_wait), result),
        _row("VIP wait p50 / max ms, in the sale", lambda run: _pair(run.vip_wait), result),
        _row("VIPs accepted, not started", lambda run: run.vips_not_started, result),
        _row("backlog max / at the end, orders", lambda run: f"{run.backlog_max:,} / {run.backlog_final:,}", result),
        _row("regular posted: first try / after retries / never", lambda run: _tally(run.regular), result),
        _row("accepted: processed / still queued / lost", _settled, result),
        _row("refused (429) / retries posted / other failures", _refusals, result),
        _row("Retry-After p50 / max s", lambda run: _pair(run.retry_after_ms, 1 / 1000), result),
        _row("retry after its Retry-After: p50 / max ms late", lambda run: _pair(run.retry_late_ms), result),
    ]
    header = ("flash sale", "admission off", f"admission on ({sale.budget:g} s)")
    budget_orders = sale.budget * result.on.drain_per_second
    notes = (
        f"({sale.seconds:g} s at {sale.overload:g}x the consumer's ceiling of {sale.shop.ceiling:,.0f}/s: "
        f"--concurrency {sale.shop.concurrency}, {sale.shop.handler_ms:g} ms handler; 1 in {VIP_EVERY} orders VIP; "
        f"the budget is about {budget_orders:,.0f} orders ahead at the measured drain)"
    )
    return table(header, rows) + "\n" + notes


def _settled(run: OverloadRun) -> str:
    settled = run.settled
    return f"{settled.accepted:,}: {settled.processed:,} / {settled.queued:,} / {settled.lost:,}"


def _refusals(run: OverloadRun) -> str:
    return f"{run.refusals:,} / {run.retries:,} / {run.failures:,}"


def plot_overload(results: Sequence[OverloadResult], path: Path = RESULTS / "overload.svg") -> Path:
    """The backlog, the API's estimate and each VIP's wait over the sale, admission off and on."""
    result = results[0]
    runs = (
        ("admission off", result.off, "#c0392b"),
        (f"admission on ({result.sale.budget:g} s)", result.on, "#2471a3"),
    )
    budget = result.sale.budget * result.on.drain_per_second
    backlog_lines = [Line(label, [(s.at, s.backlog) for s in run.samples], color) for label, run, color in runs]
    backlog_lines.append(Line("budget at the measured drain", [(0, budget), (result.sale.seconds, budget)], GREY, True))
    estimate_lines = [
        Line(label, [(s.at, s.expected_wait_s) for s in run.samples if s.expected_wait_s is not None], color)
        for label, run, color in runs
    ]
    estimate_lines.append(
        Line("budget", [(0, result.sale.budget), (result.sale.seconds, result.sale.budget)], GREY, True)
    )
    wait_lines = [Line(label, run.vip_waits, color, dots=True) for label, run, color in runs]
    title = f"Flash sale: {result.sale.overload:g}x the drain rate for {result.sale.seconds:g} s, 1 % VIP"
    return write_svg(
        path,
        title,
        "seconds since the sale began",
        [
            Panel("Backlog: ready orders in the lanes", "orders", backlog_lines),
            Panel("The API's expected wait for a regular order (admission's measure)", "s", estimate_lines),
            Panel("Each VIP's wait, POST to handler start", "ms", wait_lines),
        ],
    )
