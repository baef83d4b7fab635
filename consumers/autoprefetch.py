"""`ORDERLANE_PREFETCH=auto`: a consumer that finds the smallest prefetch that keeps its throughput.

A VIP order waits behind what its consumer already holds, and then for the event loop to start its handler, so
the best prefetch is the smallest one at which the consumer is still as fast as it can be. Each window (a quarter
of a second) the controller looks at the throughput X, the handler's own time W0 (a low percentile of the handler
times), how full the prefetch slots were, and the event loop's lag (how late a timer fires: how long a ready task,
such as a VIP order's handler, waits for the CPU).

- Slots mostly empty: there is no backlog to be fast on; the prefetch stays.
- The loop lags: the process is out of CPU, and more orders in flight only queue inside it. Shrink to what
  Little's law says keeps the same throughput, X x W0 plus headroom.
- The loop keeps up and the slots are full: more concurrency gives more throughput (an I/O-bound handler); grow,
  as long as the last growth paid off.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final

logger = logging.getLogger(__name__)

MIN_PREFETCH: Final = 4
MAX_PREFETCH: Final = 512
START_PREFETCH: Final = 16
WINDOW_SECONDS: Final = 0.25
SAMPLE_SECONDS: Final = 0.05
BUSY: Final = 0.7
"""Mean share of the slots in use above which there is a backlog to serve."""
LAGGING: Final = 0.002
"""Mean event-loop lag (seconds) above which the process is out of CPU."""
GROWTH: Final = 2.0
SHRINK: Final = 0.75
HEADROOM: Final = 1.2
PAYOFF: Final = 1.05
"""A growth must raise the throughput by this much to be kept."""


@dataclass(frozen=True, slots=True)
class Window:
    seconds: float
    completed: int
    handler_times: tuple[float, ...]
    busy: float
    """Mean share of the prefetch slots in use."""
    loop_lag: float
    """Mean lateness of the sampling timer, seconds."""

    @property
    def throughput(self) -> float:
        return self.completed / self.seconds


class PrefetchController:
    """Pure decisions, one per window; `AutoPrefetch` feeds it and applies them."""

    def __init__(self, start: int = START_PREFETCH) -> None:
        self.prefetch = start
        self._before_growth: tuple[int, float] | None = None
        """The prefetch and throughput before the last growth, to undo it if it did not pay off."""

    def decide(self, window: Window) -> int:
        if window.completed < 10 or window.busy < BUSY:
            self._before_growth = None
            return self.prefetch
        throughput = window.throughput
        if self._before_growth is not None:
            previous, previous_throughput = self._before_growth
            self._before_growth = None
            if throughput < previous_throughput * PAYOFF:
                self.prefetch = previous
                return self.prefetch
        if window.loop_lag > LAGGING:
            needed = math.ceil(throughput * _low_percentile(window.handler_times) * HEADROOM)
            # Towards Little's law, but by at most a quarter per window: one lagging window may be the machine's.
            self.prefetch = _bounded(min(self.prefetch, max(needed, math.ceil(self.prefetch * SHRINK))))
        else:
            self._before_growth = (self.prefetch, throughput)
            self.prefetch = _bounded(math.ceil(self.prefetch * GROWTH))
        return self.prefetch


def _low_percentile(values: Iterable[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 10]


def _bounded(prefetch: int) -> int:
    return max(MIN_PREFETCH, min(MAX_PREFETCH, prefetch))


class AutoPrefetch:
    """Samples a consumer, asks the controller once a window, and applies its answer with basic.qos."""

    def __init__(
        self,
        in_flight: Callable[[], int],
        take_handler_times: Callable[[], list[float]],
        apply: Callable[[int], Awaitable[object]],
    ) -> None:
        self.controller = PrefetchController()
        self._in_flight = in_flight
        self._take_handler_times = take_handler_times
        self._apply = apply

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            busy, lags = [], []
            while (elapsed := loop.time() - started) < WINDOW_SECONDS:
                before_sleep = loop.time()
                await asyncio.sleep(SAMPLE_SECONDS)
                lags.append(loop.time() - before_sleep - SAMPLE_SECONDS)
                busy.append(self._in_flight() / self.controller.prefetch)
            times = self._take_handler_times()
            window = Window(elapsed, len(times), tuple(times), statistics.fmean(busy), statistics.fmean(lags))
            before = self.controller.prefetch
            after = self.controller.decide(window)
            if after != before:
                logger.info("prefetch %d -> %d (%.0f orders/s)", before, after, window.throughput)
                await self._apply(after)
