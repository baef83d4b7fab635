"""Idempotent intake: an order_id is published once, however often and however concurrently it is submitted, over
HTTP (`POST /orders`) or from Python (broker.client). Both take orders here; each translates the outcome its way.

| when the order is submitted                            | the outcome                                          |
|--------------------------------------------------------|------------------------------------------------------|
| its order_id is new                                    | reserved, published, confirmed, `accepted`: Receipt  |
| the same order is known (any state but `pending`)      | its OrderStatus; nothing published                   |
| the same order is being published by this process      | waits for that publish: its OrderStatus, or its error|
| the same order is being published by another process   | OrderInProgress                                      |
| another order holds the order_id                       | OrderIdConflict                                      |
| it is `unconfirmed` (PublishError), or `pending` past  | reserved again and published, marked to be checked   |
| its hold                                               |                                                      |
| its deadline has passed, and its order_id is new       | DeadlinePassed; nothing published                    |
| ORDERLANE_ADMISSION_MAX_WAIT is set, its order_id is   | BacklogOverBudget; nothing published                 |
| new, and orders of its priority are expected to wait   |                                                      |
| longer (broker/estimates.py)                           |                                                      |
| the status store is away                               | published without the check, marked to be checked    |
|                                                        | (counted); or StatusUnavailable when                 |
|                                                        | ORDERLANE_STATUS_REQUIRED                            |

The reservation (`pending`) becomes `unconfirmed` when the broker does not confirm, and holds the order_id for
ORDERLANE_PUBLISH_TIMEOUT plus a margin at most if the process dies before it could say, so a retry can always
publish in the end. Where a copy may already be stored, the message carries CHECK_PROCESSED_HEADER: the consumer
then asks the status store whether the order was processed before it runs the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import time
from collections.abc import Awaitable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram

from broker.errors import (
    BacklogOverBudget,
    DeadlinePassed,
    OrderIdConflict,
    OrderInProgress,
    PublishError,
    StatusUnavailable,
)
from broker.estimates import WaitEstimates
from broker.messages import OrderBase, encode_order
from broker.priority import PRIORITIES, effective_priority
from broker.publisher import Publisher, Receipt
from broker.settings import Settings
from broker.status import OrderStatus, Transition, fingerprint
from broker.status_store import StatusStore, Taken

CONFIRM_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class IntakeMetrics:
    """What intake counts, on the registry of the process that takes orders (the API's, or a client's)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.accepted = Counter(
            "orderlane_orders_accepted",
            "Orders confirmed by the broker, by effective priority",
            ["priority"],
            registry=registry,
        )
        self.accepted_by_priority = {priority: self.accepted.labels(priority=str(priority)) for priority in PRIORITIES}
        """Each priority's counter, looked up once: `labels()` per order is a measurable part of the API's CPU."""
        self.publish_seconds = Histogram(
            "orderlane_publish_confirm_seconds",
            "From publish to the broker's confirm",
            buckets=CONFIRM_BUCKETS,
            registry=registry,
        )
        self.deduplicated = Counter(
            "orderlane_orders_deduplicated",
            "Orders submitted again whose order_id the status store knew: known (its status answered), conflict "
            "(another order holds it), in_progress (another request is publishing it)",
            ["outcome"],
            registry=registry,
        )
        self.without_dedup = Counter(
            "orderlane_orders_without_dedup",
            "Orders published without the duplicate check, because the status store was away",
            registry=registry,
        )
        self.refused = Counter(
            "orderlane_orders_refused",
            "Orders admission refused (429): orders of their effective priority were expected to wait longer than "
            "ORDERLANE_ADMISSION_MAX_WAIT",
            ["priority"],
            registry=registry,
        )
        self.broker_errors = Counter(
            "orderlane_broker_errors",
            "Orders the broker did not take: not confirmed, or refused while it blocks publishing",
            registry=registry,
        )


class Intake:
    """Publishes orders, through the status store when there is one."""

    def __init__(
        self,
        publisher: Publisher,
        store: StatusStore | None,
        metrics: IntakeMetrics,
        settings: Settings,
        estimates: WaitEstimates | None = None,
    ) -> None:
        self._publisher = publisher
        self._store = store
        self._estimates = estimates
        """Admission's, when ORDERLANE_ADMISSION_MAX_WAIT is set."""
        self._metrics = metrics
        self._settings = settings
        self._publishing: dict[str, _Taking] = {}
        """order_id → the request under way in this process for it."""
        self._token_prefix = os.urandom(6).hex()
        self._tokens = itertools.count()

    async def take(self, order: OrderBase) -> Receipt | OrderStatus:
        """A Receipt when this call published the order; the order's status when it was known already."""
        deadline = order.deadline
        if deadline is not None and deadline.timestamp() <= time.time() and not await self._known(order.order_id):
            # A known order_id goes on, as through admission: a repost of an order taken in time (its answer lost)
            # is answered from its status, not refused.
            raise DeadlinePassed(order.order_id, deadline)
        expected_wait = None
        if self._estimates is not None:
            expected_wait = self._estimates.current(effective_priority(order, vip_priority=self._settings.vip_priority))
            if self._settings.admission_max_wait is not None:
                await self._admit(order, expected_wait, self._settings.admission_max_wait)
        if self._store is None:
            return await self._publish(order, expected_wait)
        digest = fingerprint(encode_order(order))
        under_way = self._publishing.get(order.order_id)
        if under_way is not None:
            return await self._follow(order.order_id, digest, under_way)
        taking = self._publishing[order.order_id] = _Taking(digest)
        try:
            taken = await self._take(self._store, order, digest, expected_wait)
        except BaseException as exc:  # its error, for the followers; None if cancelled: they try for themselves
            taking.settle(exc if isinstance(exc, Exception) else None)
            raise
        else:
            taking.settle(taken)
        finally:
            # A request for the same order that comes after this one reserves: the store answers it after `accepted`,
            # which went first on the store's one connection (broker/status_store.py).
            del self._publishing[order.order_id]
        return taken

    async def _take(
        self, store: StatusStore, order: OrderBase, digest: str, expected_wait: float | None
    ) -> Receipt | OrderStatus:
        """Reserve, publish, and send `accepted` without waiting for it."""
        token = f"{self._token_prefix}{next(self._tokens):x}"  # unique enough, without a system call per order
        try:
            reservation = await store.reserve(order.order_id, digest, token)
        except StatusUnavailable:
            if self._settings.status_required:
                raise
            self._metrics.without_dedup.inc()
            return await self._publish(order, expected_wait, check_processed=True)  # a copy may exist: unknown
        if isinstance(reservation, Taken):
            if reservation.fingerprint not in (None, digest):
                raise self._conflict(order.order_id)
            if reservation.status.state == "pending":
                self._metrics.deduplicated.labels(outcome="in_progress").inc()
                raise OrderInProgress(order.order_id)
            self._metrics.deduplicated.labels(outcome="known").inc()
            return reservation.status
        try:
            receipt = await self._publish(order, expected_wait, check_processed=reservation.retaken)
        except PublishError:
            unconfirmed = Transition(order.order_id, "unconfirmed", attempt=0, at=time.time(), fields={})
            await _unless_away(store.release(unconfirmed, token))
            raise
        accepted = Transition(
            order.order_id,
            "accepted",
            attempt=0,
            at=time.time(),
            fields={"priority": receipt.priority.effective, "queue": receipt.queue},
        )
        if receipt.expected_start is not None:
            accepted.fields["expected_start"] = receipt.expected_start.timestamp()
        with contextlib.suppress(StatusUnavailable):  # counted by the store; the reservation expires by itself
            store.accept(accepted, token)
        return receipt

    async def _admit(self, order: OrderBase, expected_wait: float | None, max_wait: float) -> None:
        """Refuse a new order whose priority's expected wait is over `max_wait`. An order_id the store knows goes on:
        it is answered from its status, or published again if its first publish was never confirmed."""
        if expected_wait is None or expected_wait <= max_wait:
            return
        if await self._known(order.order_id):
            return
        priority = effective_priority(order, vip_priority=self._settings.vip_priority)
        self._metrics.refused.labels(priority=str(priority)).inc()
        raise BacklogOverBudget(order.order_id, priority, expected_wait, max_wait)

    async def _known(self, order_id: str) -> bool:
        """Whether the status store holds a record of `order_id`; False without a store, or while it is away (not
        known to be known)."""
        if self._store is not None:
            with contextlib.suppress(StatusUnavailable):
                return await self._store.get(order_id) is not None
        return False

    async def _follow(self, order_id: str, digest: str, taking: _Taking) -> OrderStatus:
        """The same order_id is being taken by this process: the same order gets that request's outcome (its
        error too)."""
        if taking.digest != digest:
            raise self._conflict(order_id)
        outcome = await taking.outcome()
        if isinstance(outcome, Exception):
            raise outcome
        if outcome is None:
            raise PublishError(f"the concurrent request for order {order_id!r} was cancelled; retry")
        self._metrics.deduplicated.labels(outcome="known").inc()
        return outcome if isinstance(outcome, OrderStatus) else _accepted(outcome, taking.settled_at)

    async def _publish(
        self, order: OrderBase, expected_wait: float | None, *, check_processed: bool = False
    ) -> Receipt:
        """Publish, confirmed; the receipt says when the order is expected to start, if that is known."""
        try:
            with self._metrics.publish_seconds.time():
                receipt = await self._publisher.publish(order, check_processed=check_processed)
        except PublishError:
            self._metrics.broker_errors.inc()
            raise
        self._metrics.accepted_by_priority[receipt.priority.effective].inc()
        if self._estimates is not None:
            self._estimates.published(receipt.priority.effective)
        if expected_wait is None or not math.isfinite(expected_wait):
            return receipt
        return replace(receipt, expected_start=datetime.now(UTC) + timedelta(seconds=expected_wait))

    def _conflict(self, order_id: str) -> OrderIdConflict:
        self._metrics.deduplicated.labels(outcome="conflict").inc()
        return OrderIdConflict(order_id)


Outcome = Receipt | OrderStatus | Exception | None
"""What a request for an order_id came to, for the concurrent ones that follow it: its publish's receipt, the
status it found, its error, or None if it was cancelled."""


class _Taking:
    """A request taking an order_id in this process, for the concurrent requests for the same order that follow it.
    Most have none: what they would wait on (a future) and read (an OrderStatus) is made only for one that comes."""

    __slots__ = ("_outcome", "_settled", "digest", "settled_at")

    def __init__(self, digest: str) -> None:
        self.digest = digest
        self.settled_at = 0.0
        self._outcome: Outcome = None
        self._settled: asyncio.Future[None] | bool = False

    def settle(self, outcome: Outcome) -> None:
        self._outcome = outcome
        self.settled_at = time.time()
        if isinstance(self._settled, asyncio.Future):
            self._settled.set_result(None)
        self._settled = True

    async def outcome(self) -> Outcome:
        if self._settled is False:
            self._settled = asyncio.get_running_loop().create_future()
        if isinstance(self._settled, asyncio.Future):
            await asyncio.shield(self._settled)
        return self._outcome


def _accepted(receipt: Receipt, at: float) -> OrderStatus:
    """The status a publish this process made has, for a concurrent request for the same order."""
    return OrderStatus(
        order_id=receipt.order_id,
        state="accepted",
        priority=receipt.priority.effective,
        queue=receipt.queue,
        at={"accepted": datetime.fromtimestamp(at, UTC)},
    )


async def _unless_away(operation: Awaitable[None]) -> None:
    """Best effort: if the store is away, a reservation expires by itself (and the failure is counted)."""
    try:
        await operation
    except StatusUnavailable:
        pass
