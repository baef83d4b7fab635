"""`python -m bench SCENARIO [--quick]`: run a benchmark beside raw aio-pika, print its table, and write its JSON
and PNG to bench/results/. SCENARIO is intake, drain, priority or all."""

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
from bench.intake import IntakeResult, measure_intake
from bench.priority import PriorityResult, measure_priority
from bench.report import plot_drain, plot_intake, plot_priority, save_json


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
)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = [" ".join(f"{name:>10}" for name in header)]
    for row in rows:
        lines.append(" ".join(f"{cell:>10,.1f}" if isinstance(cell, float) else f"{cell!s:>10}" for cell in row))
    return "\n".join(lines)


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


async def priority(plan: Plan, progress: tqdm[Any]) -> list[PriorityResult]:
    results = []
    for handler_ms in plan.priority_handler_ms:
        for prefetch in plan.priority_prefetch:
            for consumer in ("orderlane", "raw"):
                results.append(
                    await measure_priority(
                        consumer, prefetch, handler_ms, plan.priority_backlog, plan.priority_vips, plan.vip_interval
                    )
                )
                progress.update()
    return results


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
        priority, lambda p: 2 * len(p.priority_prefetch) * len(p.priority_handler_ms), show_priority, plot_priority
    ),
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
