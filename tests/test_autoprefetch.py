"""The automatic prefetch's decisions, window by window (pure), and on the real broker."""

from __future__ import annotations

import asyncio

from bench.priority import measure_priority
from broker.connection import Broker
from broker.messages import Order
from broker.settings import Settings
from consumers.autoprefetch import MAX_PREFETCH, MIN_PREFETCH, START_PREFETCH, PrefetchController, Window
from consumers.runner import Consumer
from tests.amqp import consumers_are, publish_raw, wait_until
from tests.consuming import order_message


def window(throughput: float, *, own_ms: float, lag_ms: float, busy: float = 1.0) -> Window:
    count = 100
    times = (own_ms / 1000,) * 20 + ((own_ms + lag_ms) / 1000,) * (count - 20)
    return Window(count / throughput, count, times, busy, lag_ms / 1000)


def test_grows_while_handlers_wait_on_io_and_growth_pays_off() -> None:
    controller = PrefetchController(start=16)
    assert controller.decide(window(3000, own_ms=5, lag_ms=0.2)) == 32
    assert controller.decide(window(5000, own_ms=5, lag_ms=0.2)) == 64


def test_a_growth_that_does_not_pay_off_is_undone() -> None:
    controller = PrefetchController(start=16)
    assert controller.decide(window(3000, own_ms=5, lag_ms=0.2)) == 32
    assert controller.decide(window(3010, own_ms=5, lag_ms=0.2)) == 16


def test_shrinks_to_littles_law_when_the_loop_lags() -> None:
    controller = PrefetchController(start=48)
    # 6,000 orders/s with handlers of 5 ms of their own: 30 in flight suffice; with 20 % headroom, 36.
    assert controller.decide(window(6000, own_ms=5, lag_ms=25)) == 36
    # never by more than a quarter at a time
    assert PrefetchController(start=200).decide(window(6000, own_ms=5, lag_ms=25)) == 150


def test_holds_without_a_backlog_and_stays_within_bounds() -> None:
    controller = PrefetchController(start=16)
    assert controller.decide(window(100, own_ms=5, lag_ms=0.1, busy=0.2)) == 16
    assert PrefetchController(start=MIN_PREFETCH).decide(window(10, own_ms=1, lag_ms=50)) == MIN_PREFETCH
    assert PrefetchController(start=MAX_PREFETCH).decide(window(9000, own_ms=5, lag_ms=0.1)) == MAX_PREFETCH


async def test_auto_prefetch_keeps_vip_orders_near_the_front_on_the_real_broker() -> None:
    result = await measure_priority("orderlane", "auto", handler_ms=2, backlog=3000, vips=5, vip_interval=0.1)
    assert result.met_backlog >= 1
    assert result.overtaken_max <= 100, "auto must not open the window to the whole backlog"


async def test_a_new_prefetch_takes_effect_by_subscribing_again(settings: Settings, broker: Broker) -> None:
    """RabbitMQ fixes a consumer's prefetch when it subscribes; the broker must deliver beyond the first window."""
    await publish_raw(settings.queue, *(order_message(f"a-{n}") for n in range(3000)))
    most_in_flight = 0

    async def waits_on_io(order: Order) -> None:
        nonlocal most_in_flight
        most_in_flight = max(most_in_flight, consumer.in_flight)
        await asyncio.sleep(0.05)

    consumer = Consumer(broker, waits_on_io, settings, lane=broker.topology.lanes[0], prefetch="auto")
    await consumer.start()

    async def grown() -> bool:
        return most_in_flight > START_PREFETCH

    try:
        await wait_until(grown, within=30, what="more orders in flight than the first prefetch allowed")
        assert consumer.prefetch > START_PREFETCH
        assert await consumers_are(settings.queue, 1), "the old subscription is cancelled"
    finally:
        await consumer.stop(grace_seconds=5)
