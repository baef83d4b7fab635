"""Idle: the floor under the priority scenario's VIP wait. The same VIPs, the same handler, with no backlog ahead of
them, so what they wait is the trip alone: the HTTP request, the status store's reservation, the broker, the
consumer's dispatch.

Beside it, the status store's round trip (a `get` of an order nobody has) as the API makes it for a lone request: after
as long a quiet as between two VIPs, and back to back. On a virtual machine whose cores idle between requests, the
first includes waking Redis and this process, as the reservation of a VIP posted to an API that is not busy does.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry

from bench.priority import SYSTEMS, PriorityResult, measure_rounds
from bench.tables import show_steps, table
from bench.workload import bench_settings
from broker.status_store import READINESS_KEY, open_status_store

IDLE_SYSTEMS: Final = (
    "orderlane",
    "orderlane, VIPs over HTTP",
    "orderlane, VIPs over HTTP, status store off",
    "raw p10",
)
HANDLER_MS: Final = 5
ROUND_TRIPS: Final = 100


@dataclass(frozen=True, slots=True)
class RoundTrips:
    """The status store's round trip, p50 in ms."""

    quiet_seconds: float
    after_quiet_ms: float
    back_to_back_ms: float


@dataclass(frozen=True, slots=True)
class IdleResult:
    vips: tuple[PriorityResult, ...]
    store: RoundTrips


async def store_round_trips(count: int, quiet: float) -> RoundTrips:
    async with open_status_store(bench_settings(), CollectorRegistry()) as store:
        if store is None:
            raise SystemExit("bench: the idle scenario needs a status store, and ORDERLANE_STATUS_URL is empty")
        await store.answers()

        async def round_trip_ms(after: float) -> float:
            await asyncio.sleep(after)
            started = time.perf_counter()
            await store.get(READINESS_KEY)
            return (time.perf_counter() - started) * 1000

        after_quiet = [await round_trip_ms(quiet) for _ in range(count)]
        back_to_back = [await round_trip_ms(0) for _ in range(count)]
    return RoundTrips(quiet, statistics.median(after_quiet), statistics.median(back_to_back))


async def measure_idle(vips: int, interval: float, warmup: float, rounds: int, ran: Callable[[], object]) -> IdleResult:
    systems = [system for system in SYSTEMS if system.name in IDLE_SYSTEMS]
    found = await measure_rounds(systems, HANDLER_MS, 0, vips, interval, warmup, rounds, ran)
    store = await store_round_trips(ROUND_TRIPS, interval)
    ran()
    return IdleResult(tuple(found), store)


def show_idle(results: Sequence[IdleResult]) -> str:
    (result,) = results
    header = ("system", "handler ms", "VIP p50 ms", "max ms")
    rows = [(r.system, f"{r.handler_ms:g}", r.wait_p50_ms, r.wait_max_ms) for r in result.vips]
    stepped = [r for r in result.vips if r.steps is not None]
    store = result.store
    trips = table(
        ("status store round trip", "p50 ms"),
        [
            (f"after {store.quiet_seconds * 1000:g} ms quiet", f"{store.after_quiet_ms:.2f}"),
            ("back to back", f"{store.back_to_back_ms:.2f}"),
        ],
    )
    return f"{table(header, rows)}\n\n{show_steps(stepped)}\n\n{trips}"
