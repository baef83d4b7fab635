"""How long an order entering each lane now is expected to wait before its handler starts: the ready messages of
that lane and of the lanes more urgent than it (a consumer takes those first), divided by the rate at which the
consumers drain the queues. The rate is the status store's departure counter (broker/status.lua) read every
ESTIMATE_SAMPLE_SECONDS, over the last RATE_WINDOW_SECONDS; the depths are the broker's, read as often.

An estimate, not a promise: orders more urgent than it that arrive meanwhile go first, and within a lane a more
urgent priority goes first too (the broker keeps no count per priority). Without a status store there is no rate,
hence no estimate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import accumulate
from typing import Final

from broker.connection import BROKER_ERRORS, Broker
from broker.errors import OrderlaneError
from broker.priority import PRIORITIES
from broker.queues import QueueStats, queue_stats
from broker.status_store import StatusStore
from broker.topology import Topology

logger = logging.getLogger(__name__)

ESTIMATE_SAMPLE_SECONDS: Final = 1.0
STALE_SECONDS: Final = 5.0
"""Estimates not refreshed for this long (the broker or the store did not answer) are not used: admission admits."""
RATE_WINDOW_SECONDS: Final = 10.0
"""The drain rate is the departures of the last this many seconds: long enough to smooth a burst of acks, short
enough to follow consumers that were added or stopped."""

Depths = Callable[[], Awaitable[list[QueueStats]]]
"""The broker's ready messages and consumers of every queue (broker/queues.py)."""


@dataclass(frozen=True, slots=True)
class LaneWait:
    """What an order entering `queue` now waits for."""

    queue: str
    ahead: int
    """Ready messages in this lane and the lanes more urgent than it."""
    per_second: float | None
    """The consumers' drain rate, all lanes together; None until two samples were taken."""

    @property
    def seconds(self) -> float | None:
        """The expected wait: `ahead` at the drain rate; infinite when something waits and nothing drains; None
        while the rate is not known yet."""
        if self.per_second is None:
            return None
        if self.ahead == 0:
            return 0.0
        return self.ahead / self.per_second if self.per_second > 0 else math.inf


def lane_waits(
    queues: Sequence[str], ready: Sequence[int], per_second: float | None, drained: float = 0.0
) -> list[LaneWait]:
    """One LaneWait per lane, most urgent first: each counts what waits in its lane and in every lane before it, less
    the `drained` orders taken since `ready` was counted (the consumers take the most urgent first)."""
    return [
        lane_wait(queue, ahead, per_second, drained) for queue, ahead in zip(queues, accumulate(ready), strict=True)
    ]


def lane_wait(queue: str, ahead: int, per_second: float | None, drained: float) -> LaneWait:
    """The wait in `queue` with `ahead` ready in it and the lanes before it, `drained` of them taken since."""
    return LaneWait(queue, max(0, math.ceil(ahead - drained)), per_second)


class DrainRate:
    """Departures per second over the last `window` seconds, from the counter's samples: what the consumers can
    drain, measured while orders wait for them. While nothing waits they drain only what arrives, so an idle stretch
    is not averaged in: the window restarts at the last sample that found the lanes empty."""

    def __init__(self, window: float = RATE_WINDOW_SECONDS) -> None:
        self._window = window
        self._samples: deque[tuple[float, int]] = deque()
        self._idle = False
        """The last sample found the lanes empty."""

    def add(self, at: float, departed: int, *, waiting: bool = True) -> None:
        """A sample of the counter; `waiting`: orders were ready in a lane (the consumers had work queued)."""
        samples = self._samples
        if samples and departed < samples[-1][1]:
            samples.clear()  # the counter was reset (a new Redis): start again
        if self._idle or not waiting:  # from the last idle sample on: idle, the rate over the last interval only
            while len(samples) > 1:
                samples.popleft()
        self._idle = not waiting
        samples.append((at, departed))
        while len(samples) > 2 and at - samples[1][0] >= self._window:
            samples.popleft()

    @property
    def per_second(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (first_at, first), (last_at, last) = self._samples[0], self._samples[-1]
        return (last - first) / (last_at - first_at) if last_at > first_at else None


class WaitEstimates:
    """Every lane's expected wait, refreshed every ESTIMATE_SAMPLE_SECONDS by `sampling()`; read by intake
    (admission, the 202's expected start), `/queues` and the API's metrics."""

    def __init__(self, topology: Topology, depths: Depths, store: StatusStore) -> None:
        self._depths = depths
        self._store = store
        self._rate = DrainRate()
        self._queues = [lane.work.name for lane in topology.lanes]
        self._lane_of = {priority: self._queues.index(topology.lane_for(priority).work.name) for priority in PRIORITIES}
        self._ready = [0] * len(self._queues)
        """Each lane's ready messages at the last sample, plus what this process published into it since."""
        self._sampled_at: float | None = None
        """time.monotonic() of the last sample that succeeded; None before the first."""

    @property
    def lanes(self) -> list[LaneWait]:
        """Every lane's wait now: the last sample, what this process added since, what the consumers drained since
        at the measured rate."""
        per_second = self._rate.per_second
        return lane_waits(self._queues, self._ready, per_second, self._drained_since_sample(per_second))

    def current(self, effective_priority: int) -> float | None:
        """The expected wait in seconds of an order of this priority entering now; None when it is not known (no
        rate yet, or no sample for STALE_SECONDS). Its lane's alone: intake asks for every order."""
        if self._sampled_at is None or time.monotonic() - self._sampled_at > STALE_SECONDS:
            return None
        lane = self._lane_of[effective_priority]
        per_second = self._rate.per_second
        ahead = sum(self._ready[: lane + 1])
        return lane_wait(self._queues[lane], ahead, per_second, self._drained_since_sample(per_second)).seconds

    def _drained_since_sample(self, per_second: float | None) -> float:
        """The orders the consumers took since the last sample, at the measured rate."""
        elapsed = 0.0 if self._sampled_at is None else time.monotonic() - self._sampled_at
        return (per_second or 0.0) * elapsed

    def published(self, effective_priority: int) -> None:
        """This process published an order: it waits in its lane until the next sample counts it there. Between two
        samples a busy API takes many orders; without this, a second under the budget would admit them all."""
        self._ready[self._lane_of[effective_priority]] += 1

    async def sample(self) -> None:
        """Read the depths and the departure counter once; raises what the broker or the store raised."""
        stats = {stat.queue: stat.messages or 0 for stat in await self._depths()}
        departed = await self._store.departed()
        now = time.monotonic()
        self._ready = [stats.get(queue, 0) for queue in self._queues]
        self._rate.add(now, departed, waiting=any(self._ready))
        self._sampled_at = now

    @contextlib.asynccontextmanager
    async def sampling(self) -> AsyncIterator[None]:
        """Sample every ESTIMATE_SAMPLE_SECONDS while the context is open; a failed sample keeps the last estimates.
        On exit the sample under way finishes first: a broker call cancelled halfway (a channel being opened) would
        leave the connection in a state its close has to wait out."""
        stopping = asyncio.Event()
        task = asyncio.get_running_loop().create_task(self._keep_sampling(stopping))
        try:
            yield
        finally:
            stopping.set()
            await task

    async def _keep_sampling(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                async with asyncio.timeout(STALE_SECONDS):  # a broker that does not answer must not hold the exit
                    await self.sample()
            except (*BROKER_ERRORS, OrderlaneError, RuntimeError) as exc:  # RuntimeError: aio-pika reconnecting
                logger.debug("wait estimates not refreshed: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), ESTIMATE_SAMPLE_SECONDS)


@contextlib.asynccontextmanager
async def estimating(broker: Broker, store: StatusStore | None) -> AsyncIterator[WaitEstimates | None]:
    """The wait estimates of the lanes `broker` declared, sampled while the context is open; None without a status
    store (no drain rate)."""
    if store is None:
        yield None
        return
    estimates = WaitEstimates(
        broker.topology, partial(queue_stats, broker.connection, broker.topology, work_only=True), store
    )
    async with estimates.sampling():
        yield estimates
