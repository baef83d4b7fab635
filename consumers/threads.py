"""Plain (synchronous) functions as handlers: each call runs in a thread of a bounded pool, under the same ack,
retry and timeout policy as an async handler.

A thread cannot be cancelled. When a synchronous handler runs past ORDERLANE_HANDLER_TIMEOUT, the attempt counts as
failed at its deadline, as an async one's does (the order goes to the retry path, or is dead-lettered after its
last attempt), and the thread is abandoned, not stopped: it runs on until the function returns, its result ignored,
and it keeps its place in the pool meanwhile. So the process never runs more functions at once than it has
threads, whatever overran; a new order waits for a free thread before its own timeout starts. The function may still
be running when its order is retried, here or in another process: at least once, as for any handler
(docs/consumers.md).

The threads are daemons, unlike concurrent.futures' (which the interpreter joins at exit): a function stuck for good
must not keep a stopped consumer from exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, Final, TypeGuard

from broker.messages import OrderBase
from broker.settings import Concurrency
from consumers.delivery import Handler

logger = logging.getLogger(__name__)

SyncHandler = Callable[[Any], object]
DEFAULT_THREADS: Final = min(32, (os.cpu_count() or 1) + 4)
"""With `--concurrency auto`, how many threads a synchronous handler gets (concurrent.futures' own default)."""

_ThreadCall = tuple[Callable[[], object], asyncio.AbstractEventLoop, asyncio.Future[object]]


class InThreads:
    """An async handler that runs `function` in one of `threads` daemon threads. The policy reserves a thread first
    (`free_thread`), before the handler's deadline starts: waiting for a thread is not the handler's time, so orders
    waiting behind threads that overran are not failed for it."""

    def __init__(self, function: SyncHandler, threads: int) -> None:
        self.function = function
        self.threads = threads
        self.overrunning = 0
        """Threads still running a call whose order was given up on (its deadline, or a forced stop)."""
        self._free = asyncio.Semaphore(threads)
        self._calls: queue.SimpleQueue[_ThreadCall | None] = queue.SimpleQueue()
        self._workers = [
            threading.Thread(target=self._work, name=f"orderlane-handler-{n}", daemon=True) for n in range(threads)
        ]
        for worker in self._workers:
            worker.start()

    async def free_thread(self) -> None:
        """Wait for a thread to be free, and keep it for the next call."""
        await self._free.acquire()

    async def __call__(self, order: OrderBase) -> None:
        """Run `function(order)` on the thread `free_thread` kept; it is free again when the function returns."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[object] = loop.create_future()
        finished = threading.Event()
        context = contextvars.copy_context()  # current_delivery() and the current span work in the thread too

        def call() -> object:
            try:
                return context.run(self.function, order)
            finally:
                finished.set()
                _tell(loop, self._free.release)

        self._calls.put((call, loop, done))
        try:
            result = await asyncio.shield(done)
        except asyncio.CancelledError:
            if not finished.is_set():
                self.overrunning += 1
                done.add_done_callback(self._forget_overrun)
                logger.warning(
                    "a synchronous handler was given up on (its deadline, or a forced stop) and cannot be stopped: "
                    "its thread is left to finish (%d of %d threads now)",
                    self.overrunning,
                    self.threads,
                )
            raise
        if inspect.isawaitable(result):  # an async handler under a plain decorator: the thread only made the coroutine
            await result

    def close(self) -> None:
        """Let the threads end once they are idle (they are daemons: a stuck one ends with the process)."""
        for _ in self._workers:
            self._calls.put(None)

    def _forget_overrun(self, done: asyncio.Future[object]) -> None:
        self.overrunning -= 1
        if not done.cancelled():
            done.exception()  # what the abandoned call raised, if anything, is of no one's concern now

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            function, loop, done = call
            try:
                result = function()
            except StopIteration as exc:  # a Future cannot hold one (it ends generators): as asyncio does
                _tell(loop, _settle, done, None, RuntimeError(f"the handler raised StopIteration: {exc!r}"))
            except BaseException as exc:  # handed to the awaiting coroutine, as asyncio's executors do
                _tell(loop, _settle, done, None, exc)
            else:
                _tell(loop, _settle, done, result, None)


def as_handler(loaded: object, concurrency: Concurrency, reserved: int = 0) -> tuple[Handler, Concurrency]:
    """The handler to run and the concurrency to run it at: an async handler as it is; a synchronous one in as many
    threads as the concurrency (DEFAULT_THREADS for `auto`: threads are not free the way coroutines are), and one
    more for each of the `reserved` slots kept for VIP orders."""
    if is_async(loaded):
        return loaded, concurrency
    assert callable(loaded)
    threads = concurrency if isinstance(concurrency, int) else DEFAULT_THREADS
    logger.info("the handler is synchronous: it runs in %d threads, one order each (+%d for VIPs)", threads, reserved)
    return InThreads(loaded, threads + reserved), threads


def is_async(handler: object) -> TypeGuard[Handler]:
    """An async def (under decorators that say what they wrap, as functools.wraps does), or an object whose
    __call__ is one."""
    unwrapped = inspect.unwrap(handler) if callable(handler) else handler
    return inspect.iscoroutinefunction(unwrapped) or inspect.iscoroutinefunction(type(handler).__call__)


def _tell(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: object) -> None:
    """From a thread, have the loop run `callback`; nothing if the loop has closed meanwhile (the process is ending
    while an abandoned call still ran)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


def _settle(done: asyncio.Future[object], result: object, exc: BaseException | None) -> None:
    if done.cancelled():
        return
    if exc is not None:
        done.set_exception(exc)
    else:
        done.set_result(result)
