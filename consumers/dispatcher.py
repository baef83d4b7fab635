"""The local priority queue between the broker's deliveries and a fixed number of handler slots.

The prefetch (how many deliveries the broker may have sent) and the concurrency (how many handlers run at once)
are two different jobs. Deliveries the process holds wait here, most urgent first by their broker priority and
first in, first out within a level; `concurrency` workers each take the most urgent held delivery as soon as they
are free. A VIP order that arrives behind a deep buffer starts at the next free slot, not behind the buffer. The
broker still decides what leaves its queue; the process only reorders what it already holds.

A worker is a long-lived task: taking the next delivery costs a heap pop, not a task per message.

`reserved` more workers take only deliveries at least as urgent as `reserved_urgency` (the VIP orders): however
busy the `concurrency` workers are with the backlog, a VIP order starts at once, not when one of them is free.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Dispatcher(Generic[T]):
    """Runs `process(item, held_for)` for each held item on at most `concurrency` workers at a time, the most
    urgent first. `process` must not raise: the ack policy handles every outcome of a handler."""

    def __init__(
        self,
        process: Callable[[T, float], Awaitable[None]],
        concurrency: int,
        *,
        reserved: int = 0,
        reserved_urgency: int = 0,
    ) -> None:
        self._process = process
        self._concurrency = concurrency
        self._reserved = reserved
        self._reserved_urgency = reserved_urgency
        self._held: list[tuple[int, int, float, T]] = []
        """(-urgency, arrival, held since, item): a heap whose first entry is the most urgent, then the oldest."""
        self._sequence = itertools.count()
        self._idle: deque[asyncio.Future[None]] = deque()
        self._reserved_idle: deque[asyncio.Future[None]] = deque()
        self._workers: set[asyncio.Task[None]] = set()
        self._surplus = 0
        """Workers to retire after a lower concurrency: each exits once it is free."""
        self._closed = False
        self.running = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def concurrency(self) -> int:
        return self._concurrency

    @property
    def held(self) -> int:
        return len(self._held)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for _ in range(self._concurrency):
            self._spawn()
        for _ in range(self._reserved):
            self._spawn(self._work_reserved())

    def hold(self, item: T, urgency: int) -> None:
        """Keep `item` until a worker is free; the highest `urgency` goes first."""
        assert self._loop is not None, "start() the dispatcher first"
        heapq.heappush(self._held, (-urgency, next(self._sequence), self._loop.time(), item))
        if urgency >= self._reserved_urgency and _wake_one(self._reserved_idle):
            return
        self._wake(everyone=False)

    def set_concurrency(self, concurrency: int) -> None:
        """Add workers at once; retire surplus ones as they finish their current delivery."""
        change = concurrency - self._concurrency
        self._concurrency = concurrency
        if change > 0:
            cancelled = min(change, self._surplus)
            self._surplus -= cancelled
            for _ in range(change - cancelled):
                self._spawn()
        elif change < 0:
            self._surplus -= change
            self._wake(everyone=True)

    def release(self) -> list[T]:
        """Stop handing out deliveries: return every held one (most urgent first) for the caller to give back;
        workers finish what they run and exit."""
        self._closed = True
        released = [heapq.heappop(self._held)[3] for _ in range(len(self._held))]
        self._wake(everyone=True)
        while _wake_one(self._reserved_idle):
            pass
        return released

    async def wait_finished(self) -> None:
        """After `release()`: wait until every worker has finished its delivery and exited."""
        await asyncio.gather(*self._workers, return_exceptions=True)

    def cancel(self) -> None:
        """Cancel every worker now: what they run stays unsettled (the broker redelivers it)."""
        for worker in self._workers:
            worker.cancel()

    def _spawn(self, work: Coroutine[None, None, None] | None = None) -> None:
        worker = asyncio.get_running_loop().create_task(work or self._work())
        self._workers.add(worker)
        worker.add_done_callback(self._workers.discard)

    def _wake(self, *, everyone: bool) -> None:
        while _wake_one(self._idle) and everyone:
            pass

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        held = self._held
        while True:
            if self._surplus > 0:
                self._surplus -= 1
                return
            if not held:
                if self._closed:
                    return
                waiter = loop.create_future()
                self._idle.append(waiter)
                await waiter
                continue
            await self._run(loop, heapq.heappop(held))

    async def _work_reserved(self) -> None:
        """A reserved worker: only the held item on top, and only if it is urgent enough."""
        loop = asyncio.get_running_loop()
        held = self._held
        while not self._closed:
            if held and -held[0][0] >= self._reserved_urgency:
                await self._run(loop, heapq.heappop(held))
                continue
            waiter = loop.create_future()
            self._reserved_idle.append(waiter)
            await waiter

    async def _run(self, loop: asyncio.AbstractEventLoop, entry: tuple[int, int, float, T]) -> None:
        _, _, held_at, item = entry
        self.running += 1
        try:
            await self._process(item, loop.time() - held_at)
        except Exception:  # process() settles every outcome; anything else is a bug, which must not cost a slot
            logger.exception("unexpected error while processing a delivery")
        finally:
            self.running -= 1


def _wake_one(waiters: deque[asyncio.Future[None]]) -> bool:
    """Wake the first waiter still waiting; whether there was one."""
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return True
    return False
