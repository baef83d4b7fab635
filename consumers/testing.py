"""The test kit for handlers, for a user's own tests (docs/testing.md). Neither needs RabbitMQ or Redis.

- `run_handler(handler, order)`: one handler run on one order, as the consumer makes it, and what the consumer would
  do next (Acked, Retried, DeadLettered), decided by the consumer's own code (consumers/decisions.py, invoker.py),
  deadlines included.
- `OrderlaneHarness(handler)`: the real API and a consumer loop with the real ack policy in one process, over an
  in-memory broker (broker/memory.py) and the real status store on fakeredis (the `test` extra).

This module is a composition root, like a process's entry point: it is the one in consumers/ that imports api/.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
from asgi_lifespan import LifespanManager
from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis
from prometheus_client import CollectorRegistry
from pydantic_core import to_json

from api.app import create_app  # the composition root's privilege (tests/test_layout.py)
from broker.errors import InvalidMessage
from broker.headers import attempt_of
from broker.memory import MemoryBroker, MemoryMessage
from broker.messages import CONTENT_TYPE, OrderBase, decode_order, encode_order
from broker.priority import prioritize
from broker.settings import Settings
from broker.status_store import StatusStore
from broker.topology import Lane
from consumers.deadlines import Deadlines
from consumers.decisions import Acked, DeadLettered, DeadLetterReason, Outcome, Retried, decide, expiry
from consumers.delivery import Delivery, parse_order
from consumers.invoker import Invoker
from consumers.metrics import ConsumerMetrics
from consumers.policy import AckPolicy
from consumers.retry import RetryPolicy
from consumers.runner import enter_handler
from consumers.status import NullRecorder, StatusRecorder, StoreRecorder
from consumers.threads import InThreads, as_handler

__all__ = [
    "Acked",
    "DeadLetter",
    "DeadLetterReason",
    "DeadLettered",
    "OrderlaneHarness",
    "Outcome",
    "Retried",
    "run_handler",
]

OrderT = TypeVar("OrderT", bound=OrderBase)
BASE_URL = "http://orderlane.test"


@dataclass(frozen=True, slots=True)
class _Body:
    """An order's message as parsing reads it (consumers.delivery.Body)."""

    body: bytes
    content_type: str | None = CONTENT_TYPE


async def run_handler(
    handler: Callable[[OrderT], object],
    order: OrderT | Mapping[str, Any] | bytes | str,
    *,
    attempt: int = 1,
    redelivered: bool = False,
    settings: Settings | None = None,
) -> Outcome:
    """Run `handler` on `order` as a consumer would, and return what the consumer would do next.

    As in the consumer: `current_delivery()` gives the order's effective priority, `attempt` and `redelivered`;
    ORDERLANE_HANDLER_TIMEOUT applies (an overrun is a TimeoutError failure); a plain function runs in a thread; the
    handler gets the order decoded from its JSON body. `order` is an order instance (decoded with its own class) or
    a mapping, JSON bytes or text (validated with `settings.order_type`: an invalid one is DeadLettered("invalid"),
    and the handler does not run). An order whose deadline has passed is DeadLettered("expired") and the handler does
    not run; a failure whose retry would start after the deadline is DeadLettered("expired") too. A handler that is
    an async context manager is not entered here: enter it in the test (`async with handler:`), as the consumer does
    before its first delivery.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, not {attempt}")
    settings = settings or Settings()
    model = type(order) if isinstance(order, OrderBase) else settings.order_type
    retry_policy = RetryPolicy.from_settings(settings)
    rng = random.Random()
    try:
        parsed = parse_order(_Body(_body_of(order)), model, max_body_bytes=settings.max_body_bytes)
    except InvalidMessage as exc:
        return decide(exc, attempt, retry_policy, rng, invalid=True)
    late = expiry(parsed, time.time())
    if late is not None:
        return late
    priority = prioritize(parsed, vip_priority=settings.vip_priority, max_priority=settings.max_priority)
    delivery = Delivery(parsed.order_id, priority.effective, attempt, redelivered)
    runnable, _ = as_handler(handler, 1)
    deadlines = Deadlines(settings.handler_timeout)
    deadlines.start()
    try:
        failure = await Invoker(runnable, deadlines).run(parsed, delivery)
    finally:
        await deadlines.close()
        if isinstance(runnable, InThreads):
            runnable.close()
    return decide(failure, attempt, retry_policy, rng, order=parsed, now=time.time())


def _body_of(order: OrderBase | Mapping[str, Any] | bytes | str) -> bytes:
    """The message body the consumer would receive for `order`."""
    if isinstance(order, OrderBase):
        return encode_order(order)
    if isinstance(order, bytes):
        return order
    if isinstance(order, str):
        return order.encode()
    return to_json(order)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An order the harness's consumer dead-lettered, and why."""

    order: OrderBase | None
    """None when the body was not a valid order (reason `invalid`)."""
    reason: DeadLetterReason
    error: Exception
    attempt: int


class OrderlaneHarness:
    """The API (`client`, an httpx.AsyncClient on the app) and a consumer running `handler`, in this process.

    Orders posted are published to an in-memory broker and handled by the consumer's own ack policy, retries and
    their delays included; statuses are written by the status store's own script, on fakeredis. Handlers run one at
    a time unless ORDERLANE_CONCURRENCY is a number; ORDERLANE_STATUS_URL empty means no status store, as in a
    deployment. A handler that is an async context manager is entered first and exited last. Leaving the block
    cancels what still runs: `await drain()` first.
    """

    def __init__(self, handler: Callable[[Any], object], *, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.dead_letters: list[DeadLetter] = []
        self._handler = handler
        self._memory = MemoryBroker(self.settings)
        self._stores: list[StatusStore] = []
        self._workers: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self._stack = AsyncExitStack()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("use the harness in `async with OrderlaneHarness(...) as harness:`")
        return self._client

    @property
    def published(self) -> list[OrderBase]:
        """Every order the API published, in order (each once: not the retries)."""
        return self._memory.published

    async def drain(self, *, within: float = 30.0) -> None:
        """Wait until every published order is settled (processed or dead-lettered, retries waited out) and its
        status written. TimeoutError after `within` seconds: a handler that does not return, or retry delays longer
        than that (set ORDERLANE_RETRY_BASE_SECONDS small)."""
        settled = asyncio.ensure_future(self._memory.settled())
        try:
            done, _ = await asyncio.wait({settled, *self._workers}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            settled.cancel()
        for worker in done - {settled}:
            worker.result()  # what broke the consumer loop
        if settled not in done:
            unsettled = self._memory.outstanding
            raise TimeoutError(f"{unsettled} messages still unsettled after {within:g}s")
        for store in self._stores:
            await store.settled()

    async def __aenter__(self) -> Self:
        try:
            await self._start(self._stack)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    async def _start(self, stack: AsyncExitStack) -> None:
        """What a deployment starts, in the order it would; `stack` stops it in reverse."""
        settings, memory = self.settings, self._memory
        stack.callback(memory.close)
        metrics = ConsumerMetrics()
        recorder: StatusRecorder = NullRecorder()
        api_store: StatusStore | None = None
        if settings.status_url is not None:
            server = FakeServer()  # one Redis for both processes, each with its own client as in a deployment
            consumer_store = await self._store(stack, server, metrics.registry)
            api_store = await self._store(stack, server, CollectorRegistry())
            recorder = StoreRecorder(consumer_store, metrics)
            stack.push_async_callback(recorder.close)
        concurrency = settings.concurrency if isinstance(settings.concurrency, int) else 1
        handler, _ = as_handler(self._handler, concurrency)
        if isinstance(handler, InThreads):
            stack.callback(handler.close)
        await enter_handler(handler, stack)
        policy = AckPolicy(memory.republish, memory.topology.dead_letter.name, handler, settings, metrics, recorder)
        policy.deadlines.start()
        stack.push_async_callback(policy.deadlines.close)
        lanes = {lane.work.name: lane for lane in memory.topology.lanes}
        self._workers = [asyncio.create_task(self._consume(policy, lanes)) for _ in range(concurrency)]
        stack.push_async_callback(self._stop_workers)
        app = create_app(settings, publisher=memory, status=api_store)
        lifespan = await stack.enter_async_context(LifespanManager(app))
        transport = httpx.ASGITransport(app=lifespan.app)
        self._client = await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url=BASE_URL))

    async def _store(self, stack: AsyncExitStack, server: FakeServer, registry: CollectorRegistry) -> StatusStore:
        store = StatusStore.for_settings(FakeRedis(server=server, decode_responses=True), self.settings, registry)
        stack.push_async_callback(store.close)
        self._stores.append(store)
        return store

    async def _consume(self, policy: AckPolicy, lanes: dict[str, Lane]) -> None:
        """A handler slot: the next message, the most urgent, through the ack policy, as the consumer's do."""
        while True:
            message = await self._memory.take()
            # Held for no time in the process: with no prefetch buffer here, messages wait in the broker.
            outcome = await policy.process(message, lanes[message.queue], 0.0)
            if isinstance(outcome, DeadLettered):
                self.dead_letters.append(self._dead_letter(message, outcome))

    def _dead_letter(self, message: MemoryMessage, outcome: DeadLettered) -> DeadLetter:
        order = None if outcome.reason == "invalid" else decode_order(message.body, self.settings.order_type)
        return DeadLetter(order, outcome.reason, outcome.error, attempt_of(message.headers))

    async def _stop_workers(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
