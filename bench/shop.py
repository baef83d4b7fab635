"""The shop the overload scenarios run (bench/overload.py, bench/deadlines.py): one `python -m consumers` process
whose handler takes `handler_ms` (ORDERLANE_SIMULATED_WORK_MS) at a fixed `--concurrency`, so that it drains at most
a known, modest number of orders a second; and the statuses of its orders, read from the status store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final

from bench.intake import wait_ready
from bench.priority import free_port
from bench.sharing import running_consumers
from bench.workload import environment
from broker.settings import Settings
from broker.status import OrderStatus
from broker.status_store import StatusStore

STATUS_CHUNK: Final = 500
"""Status lookups sent at once (the store pipelines them)."""
POLL_SECONDS: Final = 0.5


@dataclass(frozen=True, slots=True)
class Shop:
    handler_ms: float = 20.0
    concurrency: int = 2
    """Handlers at once, and deliveries held per lane (the prefetch): fixed, no `auto` tuning."""

    @property
    def ceiling(self) -> float:
        """The most orders a second the consumer can take: its handlers at once, each `handler_ms` long."""
        return self.concurrency / (self.handler_ms / 1000)


def api_environment(settings: Settings, admission_max_wait: float | None = None) -> dict[str, str]:
    """The API's environment: on the settings' queue and status store, with admission as given (off unless given,
    whatever the environment says)."""
    admission = "" if admission_max_wait is None else str(admission_max_wait)
    return {**environment(settings), "ORDERLANE_ADMISSION_MAX_WAIT": admission}


@asynccontextmanager
async def consuming(settings: Settings, shop: Shop) -> AsyncIterator[int]:
    """The shop's consumer on the settings' queue, serving its metrics on the port yielded; stopped (its handlers
    finish) and exited when this returns."""
    port = free_port()
    options = ("--concurrency", str(shop.concurrency), "--prefetch", str(shop.concurrency))
    async with running_consumers(settings, shop.handler_ms, [port], options):
        await wait_ready(port, "/metrics")  # it consumes right after
        yield port


async def statuses(store: StatusStore, order_ids: Sequence[str]) -> list[OrderStatus | None]:
    """Each order's status (None if the store has no record of it), in the order of `order_ids`."""
    found: list[OrderStatus | None] = []
    for start in range(0, len(order_ids), STATUS_CHUNK):
        found += await asyncio.gather(*(store.get(order_id) for order_id in order_ids[start : start + STATUS_CHUNK]))
    return found


async def awaited(
    store: StatusStore, order_ids: Sequence[str], ended: Callable[[OrderStatus], bool], seconds: float
) -> dict[str, OrderStatus]:
    """The status of each order in `order_ids` once it has `ended`, read every POLL_SECONDS; after `seconds`, those
    that have not are left out."""
    found: dict[str, OrderStatus] = {}
    waiting = list(order_ids)
    give_up = time.monotonic() + seconds
    while True:
        for order_id, status in zip(waiting, await statuses(store, waiting), strict=True):
            if status is not None and ended(status):
                found[order_id] = status
        waiting = [order_id for order_id in waiting if order_id not in found]
        if not waiting or time.monotonic() > give_up:
            return found
        await asyncio.sleep(POLL_SECONDS)
