"""Intake beside the peers: orderlane's `python -m api` and the HTTP intakes users would write or pick instead
(bench/intake_peers: a minimal Starlette + aio-pika app, the same with orderlane's status store put in, FastAPI +
Taskiq, FastAPI + FastStream, FastAPI + Celery), each served by uvicorn with httptools and no access log, under the
same wrk load (bench/post.lua: a new order per request); and raw aio-pika publishing with confirms at the same
concurrency, no HTTP, as the ceiling.

Each run starts one intake alone on a queue of its own; afterwards every 2xx it answered must be in that queue
(`missing`, 0 in a fair run: Celery publishes without confirms). Rounds interleave the intakes, which one goes
first rotating from one round to the next; per intake, the medians.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from bench.cpu import cpu_seconds
from bench.intake import ORDERLANE_SERVER, Throughput, raw_publish, run_wrk, serving_api
from bench.workload import bench_channel, bench_settings, delete_queues
from broker.connection import open_broker
from broker.settings import Settings
from broker.topology import build_topology

CLIENTS: Final = 32
PORT: Final = 8769
RAW: Final = "raw aio-pika, confirmed, no HTTP"


def uvicorn_serving(app: str) -> tuple[str, ...]:
    return ("-m", "uvicorn", app, "--port", "{port}", "--http", "httptools", "--no-access-log", "--log-level", "error")


@dataclass(frozen=True, slots=True)
class Intake:
    server: tuple[str, ...]
    """Arguments to python, `{port}` replaced."""
    orderlane: bool = False
    """orderlane's own API, ready once /readyz answers 200; a peer is ready once it answers at all."""
    status_store: bool = True
    """Whether it keeps order statuses (and catches reposts) in the run's status store: orderlane's default, and
    the minimal app with the store put in; the other peers never do (the setting goes unread)."""


INTAKES: Final = {
    "orderlane (python -m api)": Intake(ORDERLANE_SERVER, orderlane=True),
    "orderlane, status store off": Intake(ORDERLANE_SERVER, orderlane=True, status_store=False),
    "orderlane --workers 2": Intake((*ORDERLANE_SERVER, "--workers", "2"), orderlane=True),
    "minimal Starlette + aio-pika": Intake(uvicorn_serving("bench.intake_peers.minimal:app")),
    "minimal + orderlane's status store": Intake(uvicorn_serving("bench.intake_peers.minimal_store:app")),
    "FastAPI + Taskiq": Intake(uvicorn_serving("bench.intake_peers.taskiq_app:app")),
    "FastAPI + FastStream": Intake(uvicorn_serving("bench.intake_peers.faststream_app:app")),
    "FastAPI + Celery (no confirms)": Intake(uvicorn_serving("bench.intake_peers.celery_app:app")),
}
PEER_READY: Final = ("/orders", 405)
"""A peer has no readiness endpoint: once it answers a GET of /orders (405), its lifespan has run."""


@dataclass(frozen=True, slots=True)
class IntakeRun:
    throughput: Throughput
    missing: int
    """2xx answers whose order is not in the queue."""
    cpu_us_per_order: float | None
    """The intake process's CPU time over the run, per answer: steadier than the rate on a shared machine."""


@dataclass(frozen=True, slots=True)
class PeerIntakeResult:
    intake: str
    runs: tuple[IntakeRun, ...]

    @property
    def per_second(self) -> float:
        return statistics.median(run.throughput.per_second for run in self.runs)

    @property
    def p99_ms(self) -> float:
        return statistics.median(run.throughput.p99_ms for run in self.runs)

    @property
    def missing(self) -> int:
        return sum(run.missing for run in self.runs)

    @property
    def cpu_us_per_order(self) -> float | None:
        measured = [run.cpu_us_per_order for run in self.runs if run.cpu_us_per_order is not None]
        return statistics.median(measured) if measured else None


async def intake_run(intake: Intake, seconds: float) -> IntakeRun:
    settings = bench_settings() if intake.status_store else bench_settings(status_url=None)
    try:
        if intake.orderlane:
            async with open_broker(settings):  # the peers declare their queues themselves
                pass
        ready = ("/readyz", 200) if intake.orderlane else PEER_READY
        async with serving_api(settings, PORT, intake.server, ready=ready) as process:
            before = cpu_seconds(process.pid)
            throughput = await run_wrk(CLIENTS, seconds, PORT)
            cpu_us = (cpu_seconds(process.pid) - before) / max(1, throughput.requests) * 1e6
        queues = [lane.work.name for lane in build_topology(settings).lanes] if intake.orderlane else [settings.queue]
        stored = await queue_depth(settings, queues, settle=not intake.orderlane)
    finally:
        await delete_queues(settings)
        await delete_exchange(settings.queue)  # Celery declares a direct exchange named after the queue
    return IntakeRun(throughput, max(0, throughput.requests - throughput.errors - stored), cpu_us)


async def queue_depth(settings: Settings, queues: Sequence[str], *, settle: bool) -> int:
    """Messages in the run's queues (orderlane's lanes, a peer's one queue); with `settle`, once the count stops
    growing (publishes not confirmed)."""
    async with bench_channel(settings) as channel:

        async def depth() -> int:
            total = 0
            for name in queues:
                queue = await channel.declare_queue(name, passive=True)
                total += queue.declaration_result.message_count or 0
            return total

        stored = await depth()
        while settle:
            await asyncio.sleep(0.5)
            latest = await depth()
            settle, stored = latest > stored, latest
        return stored


async def delete_exchange(name: str) -> None:
    async with bench_channel(bench_settings()) as channel:
        await channel.exchange_delete(name)


async def raw_run(seconds: float) -> IntakeRun:
    settings = bench_settings()
    try:
        async with open_broker(settings):
            pass
        return IntakeRun(await raw_publish(settings, CLIENTS, seconds), 0, None)
    finally:
        await delete_queues(settings)


async def measure_peer_intake(seconds: float, rounds: int, progress: Callable[[], object]) -> list[PeerIntakeResult]:
    runs: dict[str, list[IntakeRun]] = {name: [] for name in (*INTAKES, RAW)}
    names = list(INTAKES)
    for round_number in range(rounds):
        turn = round_number % len(names)
        for name in names[turn:] + names[:turn]:
            runs[name].append(await intake_run(INTAKES[name], seconds))
            progress()
        runs[RAW].append(await raw_run(seconds))
        progress()
    return [PeerIntakeResult(name, tuple(found)) for name, found in runs.items()]
