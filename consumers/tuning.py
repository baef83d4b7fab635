"""`ORDERLANE_CONCURRENCY=auto` and `ORDERLANE_PREFETCH=auto`: the two knobs, tuned separately while running.

Each window (a quarter of a second) the tuner looks at the process: its throughput X, the handler's own time W0 (a
low percentile of the handler times), how full the slots were, the event loop's lag (how late a timer fires: how
long a ready task, such as a VIP order's handler, waits for the CPU), and per lane how many deliveries were held
unstarted at the least (the low-water mark) and whether the broker still had orders while a slot stood empty.

Concurrency (handler slots), by Little's law:
- Slots mostly empty: there is no backlog to be fast on; it stays.
- The loop lags: the process is out of CPU, and more handlers at once only queue inside it. Shrink towards
  X x W0 plus headroom.
- The loop keeps up, the slots are full and deliveries always waited for one: more concurrency gives more
  throughput (an I/O-bound handler); grow, as long as the last growth paid off. When the slots wait for
  deliveries instead, the broker is what limits, and more slots would only stand empty.

Depth (the lane's prefetch: deliveries the broker may have sent): just enough to keep the slots fed at the current
rate. A slot that found nothing held while the broker had orders ready means the refill (an ack out, the next
delivery in) outlasted the buffer: grow. A buffer that never ran below some margin holds orders that another
consumer process could be running: shrink by what was never needed.

The consumer process (consumers/runner.py) starts from a TuningPlan (its slots, each lane's depth, the controllers)
and wires the plan's tuner: the tuner keeps the handler times and reads the lanes' counters; nothing else does.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from broker.settings import Concurrency, Prefetch
from broker.topology import Lane

logger = logging.getLogger(__name__)

AUTO_MIN_CONCURRENCY: Final = 4
AUTO_MAX_CONCURRENCY: Final = 512
"""The most handlers `auto` runs at once (a fixed ORDERLANE_CONCURRENCY may go up to settings.MAX_CONCURRENCY)."""
AUTO_START_CONCURRENCY: Final = 16
MIN_DEPTH: Final = 4
MAX_DEPTH: Final = 1024
MARGIN: Final = 4
"""Held deliveries a lane keeps at its low-water mark: the buffer that covers a refill."""
WINDOW_SECONDS: Final = 0.25
LAG_SAMPLE_SECONDS: Final = 0.05
"""How often the event loop's lag is sampled."""
BUSY: Final = 0.7
"""Mean share of the slots in use above which there is a backlog to serve."""
WAITING: Final = 1.0
"""Mean deliveries held unstarted from which they wait for slots rather than slots for them."""
FULL: Final = 0.95
"""Mean share of the slots in use below which some stood empty."""
LAGGING: Final = 0.002
"""Mean event-loop lag (seconds) above which the process is out of CPU."""
GROWTH: Final = 2.0
SHRINK: Final = 0.75
HEADROOM_FACTOR: Final = 1.2
"""Little's law's concurrency is multiplied by this, so a shrink leaves a fifth more slots than the rate needs."""
PAYOFF: Final = 1.05
"""A growth must raise the throughput by this much to be kept."""
DEPTH_GROWTH: Final = 1.5
COOLDOWN_WINDOWS: Final = 8
"""Windows to wait after a growth of the depth that did not pay off."""


@dataclass(frozen=True, slots=True)
class Window:
    seconds: float
    completed: int
    handler_times: tuple[float, ...]
    busy: float
    """Mean share of the slots in use."""
    loop_lag: float
    """Mean lateness of the sampling timer, seconds."""
    held: float
    """Mean number of deliveries held unstarted: from about 1 up, deliveries waited for slots."""

    @property
    def throughput(self) -> float:
        return self.completed / self.seconds


class Trial:
    """A growth on trial: kept only if the next window's throughput rose by PAYOFF."""

    def __init__(self) -> None:
        self._before: tuple[int, float] | None = None

    def begin(self, value: int, throughput: float) -> None:
        self._before = (value, throughput)

    def cancel(self) -> None:
        self._before = None

    def undo_to(self, throughput: float) -> int | None:
        """The value before the growth on trial if it did not pay off; None if it did, or none was on trial."""
        if self._before is None:
            return None
        (value, before), self._before = self._before, None
        return value if throughput < before * PAYOFF else None


class ConcurrencyController:
    """Pure decisions on the number of handler slots, one per window."""

    def __init__(self, start: int = AUTO_START_CONCURRENCY, ceiling: int = AUTO_MAX_CONCURRENCY) -> None:
        self.ceiling = ceiling
        self.concurrency = self._bounded(start)
        self._trial = Trial()

    def decide(self, window: Window) -> int:
        if window.completed < 10 or window.busy < BUSY:
            self._trial.cancel()
            return self.concurrency
        throughput = window.throughput
        if (previous := self._trial.undo_to(throughput)) is not None:
            self.concurrency = previous
            return self.concurrency
        if window.loop_lag > LAGGING:
            needed = math.ceil(throughput * _low_percentile(window.handler_times) * HEADROOM_FACTOR)
            # Towards Little's law, but by at most a quarter per window: one lagging window may be the machine's.
            shrunk = max(needed, math.ceil(self.concurrency * SHRINK))
            self.concurrency = self._bounded(min(self.concurrency, shrunk))
        elif self.concurrency < self.ceiling and window.held >= WAITING:
            self._trial.begin(self.concurrency, throughput)
            self.concurrency = self._bounded(math.ceil(self.concurrency * GROWTH))
        return self.concurrency

    def _bounded(self, concurrency: int) -> int:
        return max(AUTO_MIN_CONCURRENCY, min(self.ceiling, AUTO_MAX_CONCURRENCY, concurrency))


@dataclass(frozen=True, slots=True)
class LaneWindow:
    low_water: int
    """The fewest of the lane's deliveries held unstarted when a slot took one."""
    starved: bool
    """Slots stood empty while the lane's buffer ran dry and its queue had orders ready at the broker."""


class DepthController:
    """Pure decisions on one lane's depth, one per window: the slots plus a headroom for the deliveries on their
    way from the broker and a few held ready.

    - Slots stood empty while the broker had orders ready and the buffer ran dry: the window did not cover the
      time from an ack to the next delivery. Grow the headroom, and keep the growth only if the throughput rose:
      when the broker itself is the limit, a deeper window only lengthens the line a VIP order waits in, at the
      broker and on the wire. After a growth that did not pay, wait a while before trying again.
    - The buffer never ran below the margin: shrink the headroom by what was never needed.
    """

    def __init__(self, slots: int, headroom: int = 2 * MARGIN) -> None:
        self.slots = slots
        self.headroom = headroom
        self._trial = Trial()
        self._cooldown = 0

    @property
    def depth(self) -> int:
        return max(MIN_DEPTH, min(MAX_DEPTH, self.slots + self.headroom))

    def decide(self, window: LaneWindow, slots: int, throughput: float) -> int:
        self.slots = slots
        if (previous := self._trial.undo_to(throughput)) is not None:
            self.headroom = previous
            self._cooldown = COOLDOWN_WINDOWS
            return self.depth
        if self._cooldown > 0:
            self._cooldown -= 1
        elif window.starved:
            self._trial.begin(self.headroom, throughput)
            self.headroom = min(MAX_DEPTH, math.ceil(self.headroom * DEPTH_GROWTH))
            return self.depth
        if window.low_water > MARGIN:
            self.headroom = max(MARGIN, self.headroom - (window.low_water - MARGIN))
        return self.depth


def _low_percentile(values: Iterable[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 10]


class LaneCounters:
    """One lane's deliveries held unstarted, and the fewest held when a slot took one (the low-water mark) since the
    tuner last took it. The consumer tells each change with one call; only the tuner reads them."""

    __slots__ = ("_held", "_low_water")

    def __init__(self) -> None:
        self._held = 0
        self._low_water = 0

    def received(self) -> None:
        self._held += 1

    def started(self) -> None:
        self._held -= 1
        if self._held < self._low_water:
            self._low_water = self._held

    def dropped(self) -> None:
        """A held delivery left unstarted (its channel was lost)."""
        self._held -= 1

    def take_low_water(self) -> int:
        low_water, self._low_water = self._low_water, self._held
        return low_water


@dataclass(frozen=True, slots=True)
class LanePlan:
    depth: int
    """The lane's depth at the start."""
    controller: DepthController | None
    """None: the depth is fixed."""
    counters: LaneCounters

    @property
    def prefetch(self) -> int | Literal["auto"]:
        """The lane's prefetch as set: its depth, or `auto`."""
        return "auto" if self.controller is not None else self.depth


@dataclass(frozen=True, slots=True)
class TuningPlan:
    """How a consumer process starts: its handler slots, each lane's depth, and the controllers of what is `auto`."""

    slots: int
    concurrency_controller: ConcurrencyController | None
    """None: the concurrency is fixed."""
    lanes: tuple[LanePlan, ...]

    @classmethod
    def of(cls, lanes: Sequence[Lane], prefetch: Prefetch, concurrency: Concurrency) -> TuningPlan:
        """`prefetch` applies to the lanes that do not set their own. With every depth fixed, more slots than
        deliveries held could never be busy: `auto` concurrency starts, and stays, at most at their sum."""
        fixed_depths = [lane.prefetch or (prefetch if prefetch != "auto" else None) for lane in lanes]
        fixed_total = None if None in fixed_depths else sum(depth or 0 for depth in fixed_depths)
        if concurrency == "auto":
            slots = min(AUTO_START_CONCURRENCY, fixed_total or AUTO_START_CONCURRENCY)
            controller = ConcurrencyController(slots, fixed_total or AUTO_MAX_CONCURRENCY)
        else:
            slots, controller = concurrency, None
        planned = []
        for depth in fixed_depths:
            depth_controller = DepthController(slots) if depth is None else None
            start = depth or (depth_controller.depth if depth_controller else 0)
            planned.append(LanePlan(start, depth_controller, LaneCounters()))
        return cls(slots, controller, tuple(planned))

    @property
    def concurrency(self) -> int | Literal["auto"]:
        """The concurrency as set: the number of slots, or `auto`."""
        return "auto" if self.concurrency_controller is not None else self.slots

    @property
    def tuned(self) -> bool:
        """Whether anything is `auto`: a tuner runs."""
        return self.concurrency_controller is not None or any(lane.controller is not None for lane in self.lanes)

    def tuner(self, process: SampledProcess, slots: Resizable, lanes: Sequence[TunedLane]) -> AutoTuner | None:
        """The tuner that carries out this plan on `process`, its `slots` and its `lanes`; None unless `tuned`."""
        return AutoTuner(self, process, slots, lanes) if self.tuned else None


class SampledProcess(Protocol):
    """What the tuner samples of the consumer process."""

    @property
    def in_flight(self) -> int: ...
    @property
    def held(self) -> int: ...
    @property
    def settling(self) -> int: ...


class Resizable(Protocol):
    """The handler slots (consumers.dispatcher.Dispatcher)."""

    def set_concurrency(self, concurrency: int) -> None: ...


class TunedLane(Protocol):
    """A lane's subscription (consumers.subscription.Subscription)."""

    async def ready_at_broker(self) -> int: ...
    async def set_depth(self, depth: int) -> None: ...


class AutoTuner:
    """Samples the process, asks the plan's controllers once a window, and applies their answers to the slots and
    the lanes. It keeps the handler times (`handler_time`, the ack policy's observer) and reads the lanes' counters."""

    def __init__(self, plan: TuningPlan, process: SampledProcess, slots: Resizable, lanes: Sequence[TunedLane]) -> None:
        self._plan = plan
        self._process = process
        self._slots = slots
        self._lanes = lanes
        self._handler_times: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._tuning: asyncio.Task[None] | None = None

    @property
    def slots(self) -> int:
        controller = self._plan.concurrency_controller
        return controller.concurrency if controller else self._plan.slots

    def handler_time(self, seconds: float) -> None:
        self._handler_times.append(seconds)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop sampling; a decision being applied finishes first (a cancelled broker call would close its
        channel)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._tuning is not None:
            await asyncio.gather(self._tuning, return_exceptions=True)

    async def _run(self) -> None:
        """Windows one after the other, each from the end of the one before: the time its decisions took (broker
        calls, for the depths) is in the next one, with the handlers that completed meanwhile, so a window's
        throughput is what the process did in it. Its other figures are sampled for WINDOW_SECONDS after the
        decisions."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._handler_times = []
        while True:
            busy, lags, held, settling = [], [], [], []
            sampling_since = loop.time()
            while loop.time() - sampling_since < WINDOW_SECONDS:
                before_sleep = loop.time()
                await asyncio.sleep(LAG_SAMPLE_SECONDS)
                lags.append(loop.time() - before_sleep - LAG_SAMPLE_SECONDS)
                busy.append(self._process.in_flight / self.slots)
                held.append(self._process.held)
                settling.append(self._process.settling)
            ended = loop.time()
            times, self._handler_times = self._handler_times, []
            window = Window(
                ended - started,
                len(times),
                tuple(times),
                statistics.fmean(busy),
                statistics.fmean(lags),
                statistics.fmean(held),
            )
            started = ended
            self._tuning = asyncio.create_task(self._tune(window, max(settling)))
            try:
                await asyncio.shield(self._tuning)
            except Exception:  # a window whose decision failed must not end the tuning
                logger.exception("automatic tuning: a decision failed; going on")

    async def _tune(self, window: Window, settling: int) -> None:
        """`settling`: the most deliveries seen done but not yet acked (their ack waits for the status store);
        the window must hold them besides the slots, or they starve the slots."""
        if (concurrency := self._plan.concurrency_controller) is not None:
            before = concurrency.concurrency
            after = concurrency.decide(window)
            if after != before:
                logger.info("concurrency %d -> %d (%.0f orders/s)", before, after, window.throughput)
                self._slots.set_concurrency(after)
        low_waters = [lane.counters.take_low_water() for lane in self._plan.lanes]
        for index, (lane, planned) in enumerate(zip(self._lanes, self._plan.lanes, strict=True)):
            if (controller := planned.controller) is None:
                continue
            starved = window.busy < FULL and low_waters[index] <= 0 and await lane.ready_at_broker() > 0
            before = controller.depth
            window_slots = self.slots + settling
            after = controller.decide(LaneWindow(low_waters[index], starved), window_slots, window.throughput)
            if after != before:
                logger.debug("lane %d: prefetch %d -> %d", index, before, after)
                await lane.set_depth(after)
