"""Submitting orders from Python with the guarantees of `POST /orders`: broker-confirmed, idempotent on order_id,
its status readable. `AsyncOrderClient` for asyncio code, `OrderClient` for threads (as httpx pairs AsyncClient and
Client); both take orders through broker.intake, as the API does, and raise its domain errors unchanged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Iterator, Mapping
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

from prometheus_client import CollectorRegistry
from pydantic_core import to_json

from broker.connection import open_broker
from broker.errors import ClientClosed, ConfigurationError
from broker.estimates import estimating
from broker.intake import Intake, IntakeMetrics
from broker.messages import ORDER_ID, OrderBase
from broker.publisher import OrderPublisher, Receipt
from broker.settings import Settings
from broker.status import OrderStatus
from broker.status_store import StatusStore, open_status_store

Result = TypeVar("Result")
Submitted = OrderBase | Mapping[str, Any]
"""An instance of the order model (ORDERLANE_ORDER_MODEL), or a mapping validated with it."""


@dataclass(frozen=True, slots=True)
class _Opened:
    """What an open client holds."""

    intake: Intake
    store: StatusStore | None
    resources: AsyncExitStack


class AsyncOrderClient:
    """One broker connection, the status store and an intake, opened by `async with` and closed on exit. Open it
    once per process (a web app's lifespan) and share it: concurrent submits share the confirm channel, and
    concurrent submits of the same order publish it once. A client opens once; exit waits for the calls in flight."""

    def __init__(self, settings: Settings | None = None, *, registry: CollectorRegistry | None = None) -> None:
        self._settings = settings or Settings()
        self._model = self._settings.order_type
        self._registry = CollectorRegistry() if registry is None else registry
        self._state: Literal["new", "opening", "open", "closing", "closed"] = "new"
        self._opened: _Opened | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise ClientClosed(f"this client is {self._state}: a client opens once, make a new one")
        self._state = "opening"
        try:
            async with AsyncExitStack() as resources:
                store = await resources.enter_async_context(open_status_store(self._settings, self._registry))
                broker = await resources.enter_async_context(open_broker(self._settings))
                estimates = None
                if self._settings.admission_max_wait is not None:  # sampled only for admission: a client shows none
                    estimates = await resources.enter_async_context(estimating(broker, store))
                publisher = OrderPublisher(broker, self._settings)
                intake = Intake(publisher, store, IntakeMetrics(self._registry), self._settings, estimates)
                self._opened = _Opened(intake, store, resources.pop_all())
        except BaseException:
            self._state = "closed"
            raise
        self._state = "open"
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._state != "open":
            return
        self._state = "closing"  # new calls are refused from here
        try:
            await self._idle.wait()
        finally:  # closed even if the wait was cancelled
            assert self._opened is not None
            opened, self._opened = self._opened, None
            self._state = "closed"
            await opened.resources.aclose()

    async def submit(self, order: Submitted) -> Receipt | OrderStatus:
        """Publish the order, confirmed by the broker: a Receipt. If the status store knows it already, its
        OrderStatus, and nothing is published. Raises OrderIdConflict, OrderInProgress, DeadlinePassed (its deadline
        passed already), BacklogOverBudget (admission; its `retry_after_seconds` says when to try again),
        PublishError (PublishBlocked),
        StatusUnavailable (with ORDERLANE_STATUS_REQUIRED), pydantic's ValidationError for an invalid mapping, and
        TypeError for an instance of another class than the order model."""
        validated = self._validated(order)
        with self._call() as opened:
            return await opened.intake.take(validated)

    async def status(self, order_id: str) -> OrderStatus | None:
        """Where the order is; None when it is unknown (never submitted, or its record expired). Raises
        StatusUnavailable when the store does not answer, ConfigurationError when ORDERLANE_STATUS_URL is empty, and
        pydantic's ValidationError for a malformed order_id."""
        ORDER_ID.validate_python(order_id)
        with self._call() as opened:
            if opened.store is None:
                raise ConfigurationError("this client keeps no order status: ORDERLANE_STATUS_URL is empty")
            return await opened.store.get(order_id)

    def _validated(self, order: Submitted) -> OrderBase:
        """An instance of exactly the order model: a subclass's extra fields would make a body the consumer
        refuses, and converting another model silently would hide the mistake."""
        if isinstance(order, Mapping):  # as the API takes it: JSON, so "12.50" is a Decimal here as there
            return self._model.model_validate_json(to_json(dict(order)))
        if type(order) is not self._model:
            raise TypeError(
                f"submit() takes a {_name(self._model)} (ORDERLANE_ORDER_MODEL) or a mapping, "
                f"not a {_name(type(order))}"
            )
        return order

    @contextmanager
    def _call(self) -> Iterator[_Opened]:
        """One call while the client is open; counted, so that closing waits for it."""
        if self._state != "open" or self._opened is None:
            hint = "use it inside `async with`" if self._state in ("new", "opening") else "make a new one"
            raise ClientClosed(f"this client is {self._state}: {hint}")
        self._in_flight += 1
        self._idle.clear()
        try:
            yield self._opened
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()


class OrderClient:
    """The synchronous form, for threads (a Django view, a script, a sync endpoint): one AsyncOrderClient on an
    event loop in a daemon thread of its own. Open it with `with`, or `open()` and `close()` where a block does not
    fit (a client kept for the life of a web worker). Safe to share between threads: their calls run concurrently
    on that loop."""

    def __init__(self, settings: Settings | None = None, *, registry: CollectorRegistry | None = None) -> None:
        self._client = AsyncOrderClient(settings, registry=registry)
        self._lock = threading.Lock()
        self._claimed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def open(self) -> Self:
        """Start the thread and open the connection; a client opens once (a second open() raises ClientClosed)."""
        with self._lock:  # two threads opening one client: the second is refused, not given a second loop
            if self._claimed:
                raise ClientClosed("this client was opened before: a client opens once, make a new one")
            self._claimed = True
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=_run_forever, args=(loop,), name="orderlane-client", daemon=True)
        thread.start()
        try:
            _wait(asyncio.run_coroutine_threadsafe(self._client.__aenter__(), loop))
        except BaseException:
            _stop(loop, thread)
            raise
        with self._lock:
            self._loop, self._thread = loop, thread
        return self

    def close(self) -> None:
        """Wait for the calls in flight, close the connection and stop the thread; closing twice does nothing."""
        with self._lock:  # from here no call reaches the loop
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        try:
            _wait(asyncio.run_coroutine_threadsafe(self._client.__aexit__(None, None, None), loop))
        finally:
            _stop(loop, thread)

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def submit(self, order: Submitted) -> Receipt | OrderStatus:
        """As AsyncOrderClient.submit: a Receipt, or the known order's OrderStatus; the same errors."""
        return self._run(self._client.submit(order))

    def status(self, order_id: str) -> OrderStatus | None:
        """As AsyncOrderClient.status."""
        return self._run(self._client.status(order_id))

    def _run(self, call: Coroutine[Any, Any, Result]) -> Result:
        with self._lock:
            if self._loop is None:
                call.close()
                raise ClientClosed("this client is not open: use it inside `with` (or after open()), not after close()")
            future = asyncio.run_coroutine_threadsafe(call, self._loop)
        return _wait(future)


def _wait(future: concurrent.futures.Future[Result]) -> Result:
    """The result of a call on the client's loop; a caller interrupted (KeyboardInterrupt) cancels the call."""
    try:
        return future.result()
    finally:
        future.cancel()  # nothing once it is done


def _run_forever(loop: asyncio.AbstractEventLoop) -> None:
    """The client's thread: the loop until it is stopped; then, as asyncio.run does, what is left on it (a call that
    an interrupted caller cancelled) finishes, and the loop closes."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.wait(left))
    finally:
        loop.close()


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join()


def _name(model: type) -> str:
    return f"{model.__module__}.{model.__qualname__}"
