"""`python -m bench SCENARIO [--quick]`: run a benchmark beside raw aio-pika, print its table, and write its JSON
and PNG to bench/results/. SCENARIO is intake, drain, priority, endtoend, memory or all."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from bench.drain import DrainResult, measure_drain
from bench.endtoend import EndToEndResult, measure_end_to_end
from bench.intake import IntakeResult, measure_intake
from bench.memory import MemoryResult, measure_memory
from bench.priority import PriorityResult, measure_priority
from bench.report import plot_drain, plot_end_to_end, plot_intake, plot_priority, save_json
from broker.settings import Prefetch


@dataclass(frozen=True, slots=True)
class Plan:
    intake_clients: Sequence[int]
    intake_seconds: float
    drain_prefetch: Sequence[int]
    drain_messages: int
    drain_rounds: int
    priority_prefetch: Sequence[int]
    priority_handler_ms: Sequence[float]
    priority_backlog: int
    priority_vips: int
    vip_interval: float
    end_to_end_rate: float
    end_to_end_seconds: float
    memory_messages: int


FULL = Plan(
    intake_clients=(1, 2, 4, 8, 16, 32, 64, 128),
    intake_seconds=5,
    drain_prefetch=(1, 4, 16, 32, 64, 128, 256),
    drain_messages=20_000,
    drain_rounds=3,
    priority_prefetch=(1, 10, 32, 50, 200),
    priority_handler_ms=(1, 5, 20),
    priority_backlog=10_000,
    priority_vips=20,
    vip_interval=0.1,
    end_to_end_rate=500,
    end_to_end_seconds=8,
    memory_messages=100_000,
)
QUICK = Plan(
    intake_clients=(1, 32),
    intake_seconds=2,
    drain_prefetch=(1, 32, 128),
    drain_messages=3_000,
    drain_rounds=1,
    priority_prefetch=(10, 32, 200),
    priority_handler_ms=(5,),
    priority_backlog=3_000,
    priority_vips=10,
    vip_interval=0.05,
    end_to_end_rate=400,
    end_to_end_seconds=3,
    memory_messages=20_000,
)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(header)] + [
        [f"{cell:,.1f}" if isinstance(cell, float) else str(cell) for cell in row] for row in rows
    ]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    return "\n".join(" ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in cells)


async def intake(plan: Plan, progress: tqdm[Any]) -> list[IntakeResult]:
    results = []
    for clients in plan.intake_clients:
        results.append(await measure_intake(clients, plan.intake_seconds, port=8765))
        progress.update()
    return results


async def drain(plan: Plan, progress: tqdm[Any]) -> list[DrainResult]:
    results = []
    for prefetch in plan.drain_prefetch:
        results.append(await measure_drain(prefetch, plan.drain_messages, plan.drain_rounds))
        progress.update()
    return results


LANES = "high:0-2:10,default:3-9"
PRIORITY_VARIANTS: tuple[tuple[str, str], ...] = (("orderlane", ""), ("orderlane", LANES), ("raw", ""))


async def priority(plan: Plan, progress: tqdm[Any]) -> list[PriorityResult]:
    """Every prefetch for a single queue, for lanes and for raw aio-pika; then the automatic prefetch."""
    results = []
    for handler_ms in plan.priority_handler_ms:
        runs: list[tuple[str, Prefetch, str]] = [
            (consumer, prefetch, lanes) for prefetch in plan.priority_prefetch for consumer, lanes in PRIORITY_VARIANTS
        ]
        runs.append(("orderlane", "auto", ""))
        for consumer, prefetch, lanes in runs:
            results.append(
                await measure_priority(
                    consumer,
                    prefetch,
                    handler_ms,
                    plan.priority_backlog,
                    plan.priority_vips,
                    plan.vip_interval,
                    lanes=lanes,
                )
            )
            progress.update()
    return results


async def end_to_end(plan: Plan, progress: tqdm[Any]) -> list[EndToEndResult]:
    """Posted faster than one consumer with a 20 ms handler and prefetch 8 can take: a backlog builds."""
    result = await measure_end_to_end(plan.end_to_end_rate, plan.end_to_end_seconds, 20, 8, port=8766)
    progress.update()
    return [result]


def show_end_to_end(results: list[EndToEndResult]) -> str:
    header = ("priority", "orders", "p50 ms", "p99 ms", "max ms")
    return table(header, [(x.priority, x.orders, x.p50_ms, x.p99_ms, x.max_ms) for x in results[0].levels])


async def memory(plan: Plan, progress: tqdm[Any]) -> list[MemoryResult]:
    result = await measure_memory(plan.memory_messages, prefetch=64)
    progress.update()
    return [result]


def show_memory(results: list[MemoryResult]) -> str:
    result = results[0]
    rows = [(f"{(n + 1) * 10_000:,}", rss) for n, rss in enumerate(result.rss_mb)]
    return table(("orders", "RSS MB"), rows) + f"\ngrowth: {result.growth_mb:.1f} MB"


def show_intake(results: list[IntakeResult]) -> str:
    header = ("clients", "api/s", "p50 ms", "p99 ms", "raw/s", "raw p50", "raw p99", "ratio")
    rows = [
        (
            r.concurrency,
            r.api.per_second,
            r.api.p50_ms,
            r.api.p99_ms,
            r.raw.per_second,
            r.raw.p50_ms,
            r.raw.p99_ms,
            f"{r.ratio:.2f}",
        )
        for r in results
    ]
    return table(header, rows)


def show_drain(results: list[DrainResult]) -> str:
    header = ("prefetch", "orderlane/s", "raw/s", "ratio")
    return table(header, [(r.prefetch, r.orderlane_per_second, r.raw_per_second, f"{r.ratio:.2f}") for r in results])


def show_priority(results: list[PriorityResult]) -> str:
    header = ("consumer", "prefetch", "handler", "p50 ms", "p99 ms", "max ms", "overtook", "met bl", "regular/s")
    rows = [
        (
            r.consumer,
            r.prefetch,
            f"{r.handler_ms:g}",
            r.wait_p50_ms,
            r.wait_p99_ms,
            r.wait_max_ms,
            r.overtaken_mean,
            r.met_backlog,
            r.regular_per_second,
        )
        for r in results
    ]
    return table(header, rows)


@dataclass(frozen=True, slots=True)
class Scenario:
    run: Callable[[Plan, tqdm[Any]], Any]
    steps: Callable[[Plan], int]
    show: Callable[[Any], str]
    plot: Callable[[Any], Any]


SCENARIOS = {
    "intake": Scenario(intake, lambda p: len(p.intake_clients), show_intake, plot_intake),
    "drain": Scenario(drain, lambda p: len(p.drain_prefetch), show_drain, plot_drain),
    "priority": Scenario(
        priority,
        lambda p: (len(PRIORITY_VARIANTS) * len(p.priority_prefetch) + 1) * len(p.priority_handler_ms),
        show_priority,
        plot_priority,
    ),
    "endtoend": Scenario(end_to_end, lambda p: 1, show_end_to_end, plot_end_to_end),
    "memory": Scenario(memory, lambda p: 1, show_memory, lambda results: "no plot"),
}


async def run(names: list[str], plan: Plan, command: str) -> None:
    for name in names:
        scenario = SCENARIOS[name]
        with tqdm(total=scenario.steps(plan), desc=name, unit="run", file=sys.stderr) as progress:
            results = await scenario.run(plan, progress)
        print(f"\n== {name}\n{scenario.show(results)}")
        print(f"   {save_json(name, results, command)}, {scenario.plot(results)}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
    parser.add_argument("--quick", action="store_true", help="a short run of each (make bench)")
    args = parser.parse_args()
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    command = "python -m bench " + " ".join(sys.argv[1:])
    logging.basicConfig(level=logging.ERROR)  # the progress bar and the tables are the output
    asyncio.run(run(names, QUICK if args.quick else FULL, command))


if __name__ == "__main__":
    main()
