"""The automatic concurrency and depth: their decisions window by window (pure), and on the real broker."""

from __future__ import annotations

import asyncio

from broker.connection import Broker
from broker.messages import Order
from broker.settings import Settings
from broker.topology import Lane, build_topology
from consumers.runner import Consumer
from consumers.tuning import (
    AUTO_MAX_CONCURRENCY,
    AUTO_MIN_CONCURRENCY,
    AUTO_START_CONCURRENCY,
    MARGIN,
    WINDOW_SECONDS,
    AutoTuner,
    ConcurrencyController,
    DepthController,
    LaneCounters,
    LanePlan,
    LaneWindow,
    TuningPlan,
    Window,
)
from tests.amqp import consumers_are, publish_raw, wait_until
from tests.consuming import order_message


def window(throughput: float, *, own_ms: float, lag_ms: float, busy: float = 1.0, held: float = 2) -> Window:
    count = 100
    times = (own_ms / 1000,) * 20 + ((own_ms + lag_ms) / 1000,) * (count - 20)
    return Window(count / throughput, count, times, busy, lag_ms / 1000, held)


def test_concurrency_grows_while_handlers_wait_on_io_and_growth_pays_off() -> None:
    controller = ConcurrencyController(start=16)
    assert controller.decide(window(3000, own_ms=5, lag_ms=0.2)) == 32
    assert controller.decide(window(5000, own_ms=5, lag_ms=0.2)) == 64


def test_no_growth_while_the_slots_wait_for_deliveries() -> None:
    """The buffer ran dry: the broker limits, and more slots would stand empty."""
    assert ConcurrencyController(start=16).decide(window(3000, own_ms=5, lag_ms=0.2, held=0)) == 16


def test_a_growth_that_does_not_pay_off_is_undone() -> None:
    controller = ConcurrencyController(start=16)
    assert controller.decide(window(3000, own_ms=5, lag_ms=0.2)) == 32
    assert controller.decide(window(3010, own_ms=5, lag_ms=0.2)) == 16


def test_concurrency_shrinks_to_littles_law_when_the_loop_lags() -> None:
    controller = ConcurrencyController(start=48)
    # 6,000 orders/s with handlers of 5 ms of their own: 30 at once suffice; with 20 % headroom, 36.
    assert controller.decide(window(6000, own_ms=5, lag_ms=25)) == 36
    # never by more than a quarter at a time
    assert ConcurrencyController(start=200).decide(window(6000, own_ms=5, lag_ms=25)) == 150


def test_concurrency_holds_without_a_backlog_and_stays_within_bounds() -> None:
    controller = ConcurrencyController(start=16)
    assert controller.decide(window(100, own_ms=5, lag_ms=0.1, busy=0.2)) == 16
    assert (
        ConcurrencyController(start=AUTO_MIN_CONCURRENCY).decide(window(10, own_ms=1, lag_ms=50))
        == AUTO_MIN_CONCURRENCY
    )
    top = ConcurrencyController(start=AUTO_MAX_CONCURRENCY)
    assert top.decide(window(9000, own_ms=5, lag_ms=0.1)) == AUTO_MAX_CONCURRENCY
    assert ConcurrencyController(start=16, ceiling=20).decide(window(3000, own_ms=5, lag_ms=0.2)) == 20


def test_depth_is_the_slots_plus_a_headroom_grown_only_while_it_pays() -> None:
    controller = DepthController(slots=16)
    assert controller.depth == 16 + 2 * MARGIN
    starved = LaneWindow(low_water=0, starved=True)
    # slots stood empty while the broker had orders: a deeper window, on trial
    grown = controller.decide(starved, slots=16, throughput=3000)
    assert grown > 16 + 2 * MARGIN
    # it paid off: kept, and tried again
    assert controller.decide(starved, slots=16, throughput=3500) > grown
    # it did not: undone, and not tried again for a while
    assert controller.decide(starved, slots=16, throughput=3510) == grown
    assert controller.decide(starved, slots=16, throughput=3510) == grown
    # the buffer never ran below 10: 10 - MARGIN of the headroom were never needed, down to the margin
    controller = DepthController(slots=16, headroom=20)
    assert controller.decide(LaneWindow(low_water=10, starved=False), slots=16, throughput=3000) == 16 + 20 - 6
    # the depth follows the slots
    assert controller.decide(LaneWindow(low_water=MARGIN, starved=False), slots=64, throughput=3000) == 64 + 14


def two_lanes(high_prefetch: int) -> tuple[Lane, ...]:
    return build_topology(Settings(lanes=f"high:0-2:{high_prefetch},default:3-9")).lanes


def test_the_plan_starts_auto_concurrency_within_fixed_depths_and_controls_only_what_is_auto() -> None:
    fixed = TuningPlan.of(two_lanes(3), prefetch=5, concurrency="auto")
    assert (fixed.slots, fixed.concurrency, [lane.prefetch for lane in fixed.lanes]) == (8, "auto", [3, 5])
    assert fixed.concurrency_controller is not None and fixed.concurrency_controller.ceiling == 8
    auto = TuningPlan.of(two_lanes(3), prefetch="auto", concurrency=4)
    assert (auto.slots, auto.concurrency, [lane.prefetch for lane in auto.lanes]) == (4, 4, [3, "auto"])
    assert [lane.depth for lane in auto.lanes] == [3, 4 + 2 * MARGIN]
    assert fixed.tuned and auto.tuned
    assert not TuningPlan.of(two_lanes(3), prefetch=5, concurrency=7).tuned


def test_lane_counters_keep_the_fewest_held_when_a_slot_took_one() -> None:
    counters = LaneCounters()
    for _ in range(3):
        counters.received()
    counters.take_low_water()
    counters.started()
    counters.started()
    counters.received()
    assert counters.take_low_water() == 1
    counters.dropped()
    assert counters.take_low_water() == 2, "a delivery dropped unstarted is no slot taking one"
    assert counters.take_low_water() == 1


class WindowsSeen(ConcurrencyController):
    """Keeps every window it is asked to decide on."""

    def __init__(self) -> None:
        super().__init__()
        self.windows: list[Window] = []

    def decide(self, window: Window) -> int:
        self.windows.append(window)
        return super().decide(window)


class IdleProcess:
    """Nothing in flight: the slots stand empty, so each window asks the lane's broker what it holds."""

    in_flight = 0
    held = 0
    settling = 0


DECISION_WINDOWS = 3


class SlowToAnswerLane:
    """A lane whose broker takes DECISION_WINDOWS windows to say what it holds."""

    async def ready_at_broker(self) -> int:
        await asyncio.sleep(DECISION_WINDOWS * WINDOW_SECONDS)
        return 0

    async def set_depth(self, depth: int) -> None:
        pass


class Slots:
    """Handler slots that take any concurrency."""

    def set_concurrency(self, concurrency: int) -> None:
        pass


async def test_a_windows_throughput_counts_the_time_its_decisions_took() -> None:
    """Handlers complete at a steady pace while each window's decisions wait on a slow broker: every completion
    counts in the window whose time it fell in, so no window sees more than the pace (it was DECISION_WINDOWS + 1
    times the pace when a window's time left out the decisions' and its count did not). Completions from before
    the tuning started count in none."""
    controller = WindowsSeen()
    lane = LanePlan(16, DepthController(16), LaneCounters())  # its low-water mark 0: it looks starved, and asks
    tuner = AutoTuner(TuningPlan(16, controller, (lane,)), IdleProcess(), Slots(), [SlowToAnswerLane()])
    pace = 200  # completions per second, at most (a busy machine runs the loop late, so fewer)
    for _ in range(1000):
        tuner.handler_time(0.001)
    tuner.start()
    try:
        while len(controller.windows) < 3:
            tuner.handler_time(0.001)
            await asyncio.sleep(1 / pace)
    finally:
        await tuner.stop()
    assert all(window.throughput < 1.5 * pace for window in controller.windows), [
        window.throughput for window in controller.windows
    ]
    assert all(window.seconds > DECISION_WINDOWS * WINDOW_SECONDS for window in controller.windows[1:])


async def test_auto_moves_both_knobs_and_the_broker_sends_up_to_the_new_depth(
    settings: Settings, broker: Broker
) -> None:
    """An I/O-bound handler: more concurrency pays, so `auto` grows it, and the depth with it. RabbitMQ fixes a
    consumer's prefetch when it subscribes; the broker must deliver beyond the first depth."""
    await publish_raw(settings.queue, *(order_message(f"a-{n}") for n in range(3000)))
    most_running = most_outstanding = 0

    async def waits_on_io(order: Order) -> None:
        nonlocal most_running, most_outstanding
        most_running = max(most_running, consumer.in_flight)
        most_outstanding = max(most_outstanding, consumer.in_flight + consumer.held)
        await asyncio.sleep(0.05)

    consumer = Consumer(broker, waits_on_io, settings, prefetch="auto", concurrency="auto")
    first_depth = consumer.depths[0]
    await consumer.start()

    async def grown() -> bool:
        return most_running > AUTO_START_CONCURRENCY and most_outstanding > first_depth

    try:
        await wait_until(grown, within=30, what="more handlers at once and more deliveries than at the start")
        assert consumer.concurrency > AUTO_START_CONCURRENCY
        assert consumer.depths[0] > first_depth
        assert most_running <= consumer.concurrency
        assert await consumers_are(settings.queue, 1), "the old subscription is cancelled"
    finally:
        await consumer.stop(grace_seconds=5)
