"""`python -m bench SCENARIO... [--quick]`: run a benchmark beside raw aio-pika, print its table, and write its JSON
and PNG to bench/results/. SCENARIO is intake, drain, priority, peers, endtoend, memory, sharing, status (the status
store off against on), flood (intake beside 1,100 half-open connections), intake-peers (the API beside the HTTP
intakes users would pick instead), scale (1, 2 and 4 consumer processes, 1 and 2 API processes, against one),
overload (a flash sale at 3x the drain rate, admission off and on; --seconds, --budget), deadlines (orders with a
2 s deadline and a long one behind a 30 s backlog), alarm (a memory alarm on the broker: how soon orders get 503, and
202 again once it clears), levels (what a priority queue's x-max-priority costs the broker per message), idle (the
priority scenario's VIPs with nothing ahead of them: the floor under their wait) or all
(every one but seven: peers and intake-peers, which need the `peers` extra, FastStream, Taskiq, FastAPI, Celery;
scale, which takes about half a minute even with --quick; overload, over two minutes at its defaults; deadlines,
which waits out its backlog; alarm, which blocks every publisher on the broker for a while; and levels, which runs
on the broker's machine: run them by name)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, TypeVar

from tqdm import tqdm

from bench.alarm import AlarmResult, measure_alarm, show_alarm
from bench.deadlines import DeadlineResult, Expiry, measure_deadlines, show_deadlines
from bench.drain import DrainResult, measure_drain
from bench.endtoend import EndToEndResult, measure_end_to_end
from bench.flood import FloodResult, measure_flood, servers
from bench.idle import IDLE_SYSTEMS, IdleResult, measure_idle, show_idle
from bench.intake import IntakeResult, measure_intake
from bench.levels import LEVELS, LevelsResult, measure_levels, show_levels
from bench.memory import MemoryResult, measure_memory
from bench.overload import OverloadResult, Sale, measure_overload, plot_overload, show_overload
from bench.peer_intake import INTAKES, PeerIntakeResult, measure_peer_intake
from bench.priority import SYSTEMS, PriorityResult, System, measure_rounds
from bench.report import plot_drain, plot_end_to_end, plot_intake, plot_priority, plot_status, save_json
from bench.scale import API_INTAKES, ScaleResult, measure_scale
from bench.sharing import SharingResult, measure_sharing
from bench.status import CLIENTS, StatusResult, drain_measure, intake_measure, measure_status, priority_measure
from bench.tables import (
    show_drain,
    show_end_to_end,
    show_flood,
    show_intake,
    show_intake_peers,
    show_memory,
    show_priority,
    show_scale,
    show_sharing,
    show_status,
)
from broker.settings import Prefetch

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Plan:
    intake_clients: Sequence[int]
    intake_seconds: float
    drain_prefetch: Sequence[Prefetch]
    drain_messages: int
    drain_rounds: int
    priority_handler_ms: Sequence[float]
    priority_backlog: int
    priority_vips: int
    vip_interval: float
    vip_warmup: float
    priority_rounds: int
    end_to_end_rate: float
    end_to_end_seconds: float
    memory_messages: int
    sharing_processes: Sequence[int]
    sharing_backlog: int
    status_rounds: int
    flood_seconds: float
    flood_rounds: int
    peer_intake_seconds: float
    peer_intake_rounds: int
    scale_processes: Sequence[int]
    scale_seconds: float
    scale_rounds: int
    overload: Sale
    deadlines: Expiry
    alarm_rounds: int
    levels_messages: int
    levels_rounds: int


FULL = Plan(
    intake_clients=(1, 2, 4, 8, 16, 32, 64, 128),
    intake_seconds=5,
    drain_prefetch=("auto", 1, 4, 16, 32, 64, 128, 256),
    drain_messages=20_000,
    drain_rounds=3,
    priority_handler_ms=(1, 5, 20),
    priority_backlog=40_000,
    priority_vips=20,
    vip_interval=0.1,
    vip_warmup=1.5,
    priority_rounds=3,
    end_to_end_rate=500,
    end_to_end_seconds=8,
    memory_messages=100_000,
    sharing_processes=(1, 2, 3),
    sharing_backlog=30_000,
    status_rounds=3,
    flood_seconds=8,
    flood_rounds=6,  # even: each server goes first in as many rounds as it goes last
    peer_intake_seconds=8,
    peer_intake_rounds=3,
    scale_processes=(1, 2, 4),
    scale_seconds=10,
    scale_rounds=3,
    overload=Sale(),
    deadlines=Expiry(),
    alarm_rounds=3,
    levels_messages=20_000,
    levels_rounds=3,
)
QUICK = Plan(
    intake_clients=(1, 32),
    intake_seconds=2,
    drain_prefetch=("auto", 32, 128),
    drain_messages=3_000,
    drain_rounds=1,
    priority_handler_ms=(5,),
    priority_backlog=12_000,
    priority_vips=10,
    vip_interval=0.05,
    vip_warmup=0.5,
    priority_rounds=1,
    end_to_end_rate=400,
    end_to_end_seconds=3,
    memory_messages=20_000,
    sharing_processes=(2,),
    sharing_backlog=8_000,
    status_rounds=1,
    flood_seconds=3,
    flood_rounds=1,
    peer_intake_seconds=3,
    peer_intake_rounds=1,
    scale_processes=(1, 2, 4),
    scale_seconds=3,
    scale_rounds=1,
    overload=Sale(seconds=10),
    deadlines=Expiry(backlog_seconds=10),
    alarm_rounds=1,
    levels_messages=3_000,
    levels_rounds=1,
)


async def each(values: Sequence[T], measure: Callable[[T], Awaitable[R]], progress: tqdm[Any]) -> list[R]:
    """One measurement per value, in turn, ticking the progress bar."""
    results = []
    for value in values:
        results.append(await measure(value))
        progress.update()
    return results


async def intake(plan: Plan, progress: tqdm[Any]) -> list[IntakeResult]:
    return await each(plan.intake_clients, lambda clients: measure_intake(clients, plan.intake_seconds, 8765), progress)


async def drain(plan: Plan, progress: tqdm[Any]) -> list[DrainResult]:
    return await each(
        plan.drain_prefetch, lambda prefetch: measure_drain(prefetch, plan.drain_messages, plan.drain_rounds), progress
    )


async def priority(plan: Plan, progress: tqdm[Any]) -> list[PriorityResult]:
    """Every system on the same workload, the rounds interleaved; per system the median of each measure."""
    return await compare(SYSTEMS, plan, progress)


async def peers(plan: Plan, progress: tqdm[Any]) -> list[PriorityResult]:
    """orderlane beside raw aio-pika and the libraries users would pick instead (the `peers` extra)."""
    from bench.peers import PEER_SYSTEMS  # only with the peers extra installed

    return await compare((*SYSTEMS, *PEER_SYSTEMS), plan, progress)


def peer_count() -> int:
    from bench.peers import PEER_SYSTEMS

    return len(PEER_SYSTEMS)


async def compare(systems: Sequence[System], plan: Plan, progress: tqdm[Any]) -> list[PriorityResult]:
    results = []
    for handler_ms in plan.priority_handler_ms:
        results += await measure_rounds(
            systems,
            handler_ms,
            plan.priority_backlog,
            plan.priority_vips,
            plan.vip_interval,
            plan.vip_warmup,
            plan.priority_rounds,
            progress.update,
        )
    return results


async def end_to_end(plan: Plan, progress: tqdm[Any]) -> list[EndToEndResult]:
    """Posted faster than one consumer with a 20 ms handler and prefetch 8 can take: a backlog builds."""
    result = await measure_end_to_end(plan.end_to_end_rate, plan.end_to_end_seconds, 20, 8, port=8766)
    progress.update()
    return [result]


async def sharing(plan: Plan, progress: tqdm[Any]) -> list[SharingResult]:
    return await each(
        plan.sharing_processes, lambda processes: measure_sharing(processes, plan.sharing_backlog, 5), progress
    )


async def memory(plan: Plan, progress: tqdm[Any]) -> list[MemoryResult]:
    result = await measure_memory(plan.memory_messages)
    progress.update()
    return [result]


async def status(plan: Plan, progress: tqdm[Any]) -> list[StatusResult]:
    """The status store off against on, for intake, drain (a no-op handler; and a 5 ms one, settled) and priority,
    the same loads as those scenarios'."""
    intake_path = f"intake, {CLIENTS} clients, {plan.intake_seconds:g} s"
    drain_path = f"drain, {plan.drain_messages:,} orders"
    handler_ms = 5 if 5 in plan.priority_handler_ms else plan.priority_handler_ms[0]
    settled_path = f"drain, {plan.priority_backlog:,} orders, {handler_ms:g} ms handler (the middle half)"
    settled_drain = drain_measure(plan.priority_backlog, handler_ms, settled=True)
    priority_path = f"priority, {plan.priority_backlog:,} backlog, {handler_ms:g} ms handler (VIP wait p50, max)"
    priority = priority_measure(
        handler_ms, plan.priority_backlog, plan.priority_vips, plan.vip_interval, plan.vip_warmup
    )
    return [
        await measure_status(intake_path, intake_measure(plan.intake_seconds), plan.status_rounds, progress.update),
        await measure_status(drain_path, drain_measure(plan.drain_messages), plan.status_rounds, progress.update),
        await measure_status(settled_path, settled_drain, plan.status_rounds, progress.update),
        await measure_status(priority_path, priority, plan.status_rounds, progress.update),
    ]


async def flood(plan: Plan, progress: tqdm[Any]) -> list[FloodResult]:
    return await measure_flood(plan.flood_seconds, plan.flood_rounds, progress.update)


async def intake_peers(plan: Plan, progress: tqdm[Any]) -> list[PeerIntakeResult]:
    """orderlane's API beside the HTTP intakes users would pick instead (served with the `peers` extra), and raw
    publishing."""
    return await measure_peer_intake(plan.peer_intake_seconds, plan.peer_intake_rounds, progress.update)


async def scale(plan: Plan, progress: tqdm[Any]) -> list[ScaleResult]:
    return [await measure_scale(plan.scale_processes, plan.scale_seconds, plan.scale_rounds, progress.update)]


async def overload(plan: Plan, progress: tqdm[Any]) -> list[OverloadResult]:
    return [await measure_overload(plan.overload, progress.update)]


async def deadlines(plan: Plan, progress: tqdm[Any]) -> list[DeadlineResult]:
    return [await measure_deadlines(plan.deadlines, progress.update)]


async def alarm(plan: Plan, progress: tqdm[Any]) -> list[AlarmResult]:
    return [await measure_alarm(plan.alarm_rounds, progress.update)]


async def levels(plan: Plan, progress: tqdm[Any]) -> list[LevelsResult]:
    return await measure_levels(plan.levels_messages, plan.levels_rounds, progress.update)


async def idle(plan: Plan, progress: tqdm[Any]) -> list[IdleResult]:
    """The priority scenario's VIPs, as many, as often, as many rounds, with no backlog."""
    return [
        await measure_idle(
            plan.priority_vips, plan.vip_interval, plan.vip_warmup, plan.priority_rounds, progress.update
        )
    ]


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
        lambda p: len(SYSTEMS) * p.priority_rounds * len(p.priority_handler_ms),
        show_priority,
        plot_priority,
    ),
    "peers": Scenario(
        peers,
        lambda p: (len(SYSTEMS) + peer_count()) * p.priority_rounds * len(p.priority_handler_ms),
        show_priority,
        lambda results: plot_priority(results, "peers"),
    ),
    "endtoend": Scenario(end_to_end, lambda p: 1, show_end_to_end, plot_end_to_end),
    "memory": Scenario(memory, lambda p: 1, show_memory, lambda results: "no plot"),
    "sharing": Scenario(sharing, lambda p: len(p.sharing_processes), show_sharing, lambda results: "no plot"),
    "status": Scenario(status, lambda p: 4 * 2 * p.status_rounds, show_status, plot_status),
    "intake-peers": Scenario(
        intake_peers,
        lambda p: (len(INTAKES) + 1) * p.peer_intake_rounds,
        show_intake_peers,
        lambda results: "no plot",
    ),
    "flood": Scenario(flood, lambda p: len(servers()) * p.flood_rounds, show_flood, lambda results: "no plot"),
    "scale": Scenario(
        scale,
        lambda p: (len(p.scale_processes) + len(API_INTAKES)) * p.scale_rounds,
        show_scale,
        lambda results: "no plot",
    ),
    "overload": Scenario(overload, lambda p: 2, show_overload, plot_overload),
    "deadlines": Scenario(deadlines, lambda p: 1, show_deadlines, lambda results: "no plot"),
    "alarm": Scenario(alarm, lambda p: p.alarm_rounds, show_alarm, lambda results: "no plot"),
    "levels": Scenario(levels, lambda p: len(LEVELS) * p.levels_rounds, show_levels, lambda results: "no plot"),
    "idle": Scenario(idle, lambda p: len(IDLE_SYSTEMS) * p.priority_rounds + 1, show_idle, lambda results: "no plot"),
}

NOT_IN_ALL: Final = ("peers", "intake-peers", "scale", "overload", "deadlines", "alarm", "levels")
"""The peers need the `peers` extra; scale takes about half a minute even with --quick (28-36 s here); overload
runs its sale twice, with a warm-up each: over two minutes at its defaults; deadlines waits for its backlog to drain
(30 s at its defaults); alarm blocks every publisher on the broker, the machine's own, for a few seconds a round;
levels reads the broker's CPU time, so it runs on the broker's machine only."""


async def run(names: list[str], plan: Plan, command: str) -> None:
    for name in names:
        scenario = SCENARIOS[name]
        with tqdm(total=scenario.steps(plan), desc=name, unit="run", file=sys.stderr) as progress:
            results = await scenario.run(plan, progress)
        print(f"\n== {name}\n{scenario.show(results)}")
        print(f"   {save_json(name, results, command)}, {scenario.plot(results)}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenario", nargs="+", choices=[*SCENARIOS, "all"])
    parser.add_argument("--quick", action="store_true", help="a short run of each (make bench)")
    parser.add_argument("--seconds", type=float, help="overload: the sale's length (default 60; 10 with --quick)")
    parser.add_argument("--budget", type=float, help="overload: ORDERLANE_ADMISSION_MAX_WAIT of its run with admission")
    args = parser.parse_args()
    names = [name for name in SCENARIOS if name not in NOT_IN_ALL] if "all" in args.scenario else args.scenario
    command = "python -m bench " + " ".join(sys.argv[1:])
    logging.basicConfig(level=logging.ERROR)  # the progress bar and the tables are the output
    asyncio.run(run(names, with_options(QUICK if args.quick else FULL, args), command))


def with_options(plan: Plan, args: argparse.Namespace) -> Plan:
    """The plan with the overload options given on the command line."""
    sale = plan.overload
    if args.seconds is not None:
        sale = replace(sale, seconds=args.seconds)
    if args.budget is not None:
        sale = replace(sale, budget=args.budget)
    return replace(plan, overload=sale)


if __name__ == "__main__":
    main()
