"""Idempotent intake: an order_id is published once, however often and however concurrently it is posted.

| when the order is posted                               | the answer                                           |
|--------------------------------------------------------|------------------------------------------------------|
| its order_id is new                                    | reserved, published, confirmed, `accepted`: 202      |
| the same order is known (any state but `pending`)      | 200 with its status; nothing published               |
| the same order is being published by this process      | waits for that publish: 200 with its status, or 503  |
| the same order is being published by another process   | 503 `order_in_progress` with Retry-After             |
| another order holds the order_id                       | 409 `order_id_conflict`                              |
| it is `unconfirmed` (a 503), or `pending` past its hold | reserved again and published, marked to be checked    |
| the status store is away                               | published without the check, marked to be checked    |
|                                                        | (counted); or 503 when ORDERLANE_STATUS_REQUIRED     |

The reservation (`pending`) becomes `unconfirmed` when the broker does not confirm, and holds the order_id for
ORDERLANE_PUBLISH_TIMEOUT plus a margin at most if the process dies before it could say, so a retry can always
publish in the end. Where a copy may already be stored, the message carries CHECK_PROCESSED_HEADER: the consumer
then asks the status store whether the order was processed before it runs the handler.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial

from api.errors import RequestRejected
from api.metrics import ApiMetrics
from broker.errors import PublishError, StatusUnavailable
from broker.messages import Order, encode_order
from broker.publisher import Publisher, Receipt
from broker.settings import Settings
from broker.status import OrderStatus, Transition, fingerprint
from broker.status_store import StatusStore, Taken


class Intake:
    """Publishes orders, through the status store when there is one."""

    def __init__(
        self, publisher: Publisher, store: StatusStore | None, metrics: ApiMetrics, settings: Settings
    ) -> None:
        self._publisher = publisher
        self._store = store
        self._metrics = metrics
        self._settings = settings
        self._publishing: dict[str, tuple[str, asyncio.Future[Outcome]]] = {}
        """order_id → (fingerprint, the outcome of the request under way in this process for it)."""

    async def take(self, order: Order) -> Receipt | OrderStatus:
        """A Receipt when this call published the order (202); the order's status when it was known (200)."""
        if self._store is None:
            return await self._publish(order)
        digest = fingerprint(encode_order(order))
        under_way = self._publishing.get(order.order_id)
        if under_way is not None:
            return await self._follow(order.order_id, digest, *under_way)
        outcome: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._publishing[order.order_id] = (digest, outcome)
        forget = partial(self._forget, order.order_id, outcome)
        try:
            taken = await self._take(self._store, order, digest, forget)
        except BaseException as exc:  # its error, for the followers; None if cancelled: they try for themselves
            outcome.set_result(exc if isinstance(exc, Exception) else None)
            forget()
            raise
        if isinstance(taken, OrderStatus):
            outcome.set_result(taken)
            forget()
        else:
            outcome.set_result(_accepted(taken))  # its entry stays until `accepted` is written (`_take` sees to it)
        return taken

    def _forget(self, order_id: str, outcome: asyncio.Future[Outcome]) -> None:
        if self._publishing.get(order_id, (None, None))[1] is outcome:
            del self._publishing[order_id]

    async def _take(
        self, store: StatusStore, order: Order, digest: str, forget: Callable[[], None]
    ) -> Receipt | OrderStatus:
        """Reserve, publish, and send `accepted` (without waiting for it: `forget` is called once it is written
        or failed, and until then a concurrent request for the same order in this process follows this one)."""
        token = os.urandom(8).hex()
        try:
            reservation = await store.reserve(order.order_id, digest, token)
        except StatusUnavailable:
            if self._settings.status_required:
                raise
            self._metrics.without_dedup.inc()
            try:
                return await self._publish(order, check_processed=True)  # a copy may exist: nothing could tell
            finally:
                forget()
        if isinstance(reservation, Taken):
            if reservation.fingerprint not in (None, digest):
                raise self._conflict(order.order_id)
            if reservation.status.state == "pending":
                self._metrics.deduplicated.labels(outcome="in_progress").inc()
                raise OrderInProgress(order.order_id)
            self._metrics.deduplicated.labels(outcome="known").inc()
            return reservation.status
        try:
            receipt = await self._publish(order, check_processed=reservation.retaken)
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
        try:
            store.accept(accepted, token, then=forget)
        except StatusUnavailable:
            forget()
        return receipt

    async def _follow(
        self, order_id: str, digest: str, held_digest: str, outcome: asyncio.Future[Outcome]
    ) -> OrderStatus:
        """The same order_id is being taken by this process: the same order gets that request's outcome (its
        error too: a 409, a 503)."""
        if held_digest != digest:
            raise self._conflict(order_id)
        status = await asyncio.shield(outcome)
        if isinstance(status, Exception):
            raise status
        if status is None:
            raise PublishError(f"the concurrent request for order {order_id!r} was cancelled; retry")
        self._metrics.deduplicated.labels(outcome="known").inc()
        return status

    async def _publish(self, order: Order, *, check_processed: bool = False) -> Receipt:
        with self._metrics.publish_seconds.time():
            receipt = await self._publisher.publish(order, check_processed=check_processed)
        self._metrics.accepted_by_priority[receipt.priority.effective].inc()
        return receipt

    def _conflict(self, order_id: str) -> RequestRejected:
        self._metrics.deduplicated.labels(outcome="conflict").inc()
        return RequestRejected(409, "order_id_conflict", f"order_id {order_id!r} is already used by a different order")


Outcome = OrderStatus | Exception | None
"""What a request for an order_id came to, for the concurrent ones that follow it: its status, its error, or None
if it was cancelled."""


class OrderInProgress(RequestRejected):
    """Another process is publishing this order_id right now; its outcome is not known yet."""

    def __init__(self, order_id: str) -> None:
        message = f"order {order_id!r} is being published by another request; retry"
        super().__init__(503, "order_in_progress", message, headers={"Retry-After": "1"})


def _accepted(receipt: Receipt) -> OrderStatus:
    """The status a publish this process just made has, for a concurrent request for the same order."""
    return OrderStatus(
        order_id=receipt.order_id,
        state="accepted",
        priority=receipt.priority.effective,
        queue=receipt.queue,
        at={"accepted": datetime.now(UTC)},
    )


async def _unless_away(operation: Awaitable[None]) -> None:
    """Best effort: if the store is away, a reservation expires by itself (and the failure is counted)."""
    try:
        await operation
    except StatusUnavailable:
        pass
