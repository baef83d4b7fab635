"""Deadlines (issue 23): orders with a short deadline posted behind a long backlog expire and never reach the
handler; orders whose deadline the backlog leaves time for are processed.

The shop's consumer (bench/shop.py) faces a backlog of `backlog_seconds` at its ceiling, published straight to the
regular lane. Right behind it, ORDERS orders of each kind are posted to `python -m api` (at its defaults), in turn:
one with a deadline `short_seconds` after its POST, one with a deadline the backlog leaves time for (its drain at the
ceiling twice over, and LONG_MARGIN_SECONDS more). Once every order accepted has ended, expired or processed, each is
looked up in the status store: its state, and whether its handler started (`at.processing`, stamped by the consumer
just before it runs the handler; an order that expires never gets one). The consumer's own counts (processed,
expired) and the dead-letter queue's depth are read too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

import httpx
from prometheus_client import CollectorRegistry

from bench.flashsale import JSON
from bench.intake import serving_api
from bench.priority import free_port
from bench.shop import Shop, api_environment, awaited, consuming
from bench.tables import table
from bench.workload import bench_settings, delete_queues, fill, metric_totals, order, orders
from broker.connection import open_broker
from broker.messages import encode_order
from broker.queues import queue_stats
from broker.status import OrderStatus
from broker.status_store import open_status_store

ORDERS: Final = 20
"""Posted with each deadline."""
LONG_MARGIN_SECONDS: Final = 10.0
SETTLE_MARGIN_SECONDS: Final = 30.0
"""How long after the long deadline the orders may take to end; one that has not then is counted as unsettled."""
PROCESSED: Final = "orderlane_orders_processed_total"
EXPIRED: Final = "orderlane_orders_expired_total"
ENDED: Final = ("expired", "processed")


@dataclass(frozen=True, slots=True)
class Expiry:
    backlog_seconds: float = 30.0
    short_seconds: float = 2.0
    shop: Shop = field(default_factory=Shop)

    @property
    def backlog(self) -> int:
        return round(self.shop.ceiling * self.backlog_seconds)

    @property
    def long_seconds(self) -> float:
        return 2 * self.backlog_seconds + LONG_MARGIN_SECONDS


@dataclass(frozen=True, slots=True)
class Fate:
    """The orders posted with one deadline, and how they ended."""

    deadline_seconds: float
    """After the POST."""
    posted: int
    accepted: int
    expired: int
    processed: int
    started: int
    """Whose handler started."""
    unsettled: int
    """Accepted, but neither expired nor processed when the wait ended."""


@dataclass(frozen=True, slots=True)
class DeadlineResult:
    expiry: Expiry
    short: Fate
    long: Fate
    settled_seconds: float
    """From the last POST until every order accepted had ended."""
    consumer_processed: int
    """The consumer's own count: the backlog and the orders processed."""
    consumer_expired: int
    dead_letters: int
    """Messages waiting in the dead-letter queue."""


@dataclass(frozen=True, slots=True)
class Posted:
    order_id: str
    deadline_seconds: float
    accepted: bool


async def post_behind(client: httpx.AsyncClient, expiry: Expiry) -> list[Posted]:
    """ORDERS orders with each deadline, in turn, each deadline counted from just before its POST."""
    posted = []
    for number in range(2 * ORDERS):
        seconds = expiry.short_seconds if number % 2 == 0 else expiry.long_seconds
        deadline = datetime.now(UTC) + timedelta(seconds=seconds)
        new = order(number, prefix="deadline").model_copy(update={"deadline": deadline})
        response = await client.post("/orders", content=encode_order(new), headers=JSON)
        posted.append(Posted(new.order_id, seconds, response.status_code == 202))
    return posted


def fate(posted: Sequence[Posted], ended: dict[str, OrderStatus], seconds: float) -> Fate:
    mine = [post for post in posted if post.deadline_seconds == seconds]
    states = [ended[post.order_id] for post in mine if post.order_id in ended]
    accepted = sum(post.accepted for post in mine)
    return Fate(
        deadline_seconds=seconds,
        posted=len(mine),
        accepted=accepted,
        expired=sum(status.state == "expired" for status in states),
        processed=sum(status.state == "processed" for status in states),
        started=sum("processing" in status.at for status in states),
        unsettled=accepted - len(states),
    )


async def measure_deadlines(expiry: Expiry, ran: Callable[[], object]) -> DeadlineResult:
    """One run; `ran` is called after it."""
    settings = bench_settings()
    port = free_port()
    try:
        async with (
            open_broker(settings) as broker,
            open_status_store(settings, CollectorRegistry()) as store,
            serving_api(settings, port, env=api_environment(settings)),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
        ):
            assert store is not None, "the status store says which orders expired"
            await fill(settings, orders(expiry.backlog, prefix="backlog"))
            async with consuming(settings, expiry.shop) as metrics_port:
                posted = await post_behind(client, expiry)
                began = time.perf_counter()
                accepted = [post.order_id for post in posted if post.accepted]
                wait = expiry.long_seconds + SETTLE_MARGIN_SECONDS
                ended = await awaited(store, accepted, lambda status: status.state in ENDED, wait)
                settled_seconds = time.perf_counter() - began
                counts = await metric_totals(client, metrics_port, (PROCESSED, EXPIRED))
            dead_letter = broker.topology.dead_letter.name
            stats = await queue_stats(broker.connection, broker.topology)
            dead_letters = sum(stat.messages or 0 for stat in stats if stat.queue == dead_letter)
    finally:
        await delete_queues(settings)
    ran()
    return DeadlineResult(
        expiry=expiry,
        short=fate(posted, ended, expiry.short_seconds),
        long=fate(posted, ended, expiry.long_seconds),
        settled_seconds=settled_seconds,
        consumer_processed=int(counts[PROCESSED]),
        consumer_expired=int(counts[EXPIRED]),
        dead_letters=dead_letters,
    )


def show_deadlines(results: Sequence[DeadlineResult]) -> str:
    result = results[0]
    expiry = result.expiry
    header = ("deadline after POST", "posted", "202", "expired", "processed", "handler started", "unsettled")
    rows = [
        (f"{f.deadline_seconds:g} s", f.posted, f.accepted, f.expired, f.processed, f.started, f.unsettled)
        for f in (result.short, result.long)
    ]
    notes = (
        f"(posted behind {expiry.backlog:,} orders, {expiry.backlog_seconds:g} s at the consumer's ceiling of "
        f"{expiry.shop.ceiling:,.0f}/s; every order ended {result.settled_seconds:.0f} s after the last POST; the "
        f"consumer counted {result.consumer_processed:,} processed, {result.consumer_expired} expired; "
        f"{result.dead_letters} in the dead-letter queue)"
    )
    return table(header, rows) + "\n" + notes
