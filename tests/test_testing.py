"""The test kit (consumers/testing.py): run_handler's outcomes are the consumer's, and the harness runs the API and
the consumer's ack policy over the in-memory broker and status store. Only the lifespan test at the end uses the
real broker: the kit itself needs neither RabbitMQ nor Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from types import TracebackType
from typing import Annotated

import pytest
from pydantic import Field

from broker.connection import Broker
from broker.errors import InvalidMessage, PermanentFailure, PublishError
from broker.memory import MemoryBroker
from broker.messages import Order, OrderBase
from broker.settings import Settings
from consumers.delivery import Delivery, current_delivery
from consumers.runner import consume_until_stopped
from consumers.testing import Acked, DeadLettered, OrderlaneHarness, Retried, run_handler
from tests.amqp import consumers_are, depth_is, publish_raw, wait_until
from tests.consuming import order_message


class Parcel(OrderBase):
    """A user's own order model."""

    weight_grams: Annotated[int, Field(gt=0)]


def kit_settings(**changes: object) -> Settings:
    """What the `settings` fixture gives tests on the real broker (tests/conftest.py), without its broker cleanup:
    retries back within a second, five attempts."""
    values: dict[str, object] = {"queue": "kit", "retry_base_seconds": 0.05, "retry_max_seconds": 0.5, **changes}
    return Settings.model_validate(values)


ORDER = {"order_id": "o-1", "items": ["a"]}


async def fails(order: Order) -> None:
    raise ValueError("cannot ship to the moon")


async def test_a_handler_that_returns_is_acked_and_sees_its_delivery_as_the_consumer_gives_it() -> None:
    seen: list[tuple[Order, Delivery]] = []

    async def handler(order: Order) -> None:
        seen.append((order, current_delivery()))

    vip = Order(order_id="v-1", priority=7, user_type="vip", items=["a"])
    outcome = await run_handler(handler, vip, attempt=3, redelivered=True, settings=kit_settings())
    assert outcome == Acked()
    [(order, delivery)] = seen
    assert order == vip
    assert delivery == Delivery(order_id="v-1", priority=0, attempt=3, redelivered=True)  # the VIP boost applied


async def test_a_failure_is_retried_as_the_consumer_retries_it_until_the_last_attempt() -> None:
    """The real consumer, with these settings (tests/test_retry.py): attempts 1..5, backoff 0.05 s doubling with
    +-20 % jitter, then the dead-letter queue after attempt 5."""
    settings = kit_settings()
    attempts: list[int] = []
    delays: list[float] = []
    attempt = 1
    while True:
        attempts.append(attempt)
        outcome = await run_handler(fails, ORDER, attempt=attempt, settings=settings)
        if not isinstance(outcome, Retried):
            break
        assert outcome.next_attempt == attempt + 1
        assert str(outcome.error) == "cannot ship to the moon"
        delays.append(outcome.delay_seconds)
        attempt = outcome.next_attempt
    assert attempts == [1, 2, 3, 4, 5]
    for delay, nominal in zip(delays, [0.05, 0.1, 0.2, 0.4], strict=True):
        assert nominal * 0.8 <= delay <= nominal * 1.2
    assert isinstance(outcome, DeadLettered) and outcome.reason == "exhausted"
    assert isinstance(outcome.error, ValueError)


async def test_a_permanent_failure_is_dead_lettered_at_once() -> None:
    async def refuse(order: Order) -> None:
        raise PermanentFailure("no such address")

    outcome = await run_handler(refuse, ORDER, settings=kit_settings())
    assert isinstance(outcome, DeadLettered) and outcome.reason == "permanent"
    assert str(outcome.error) == "no such address"


async def test_an_invalid_body_is_dead_lettered_without_running_the_handler() -> None:
    calls: list[Order] = []

    async def handler(order: Order) -> None:
        calls.append(order)

    for body in ({"order_id": "o-1"}, b"not json", '{"order_id": "o-1", "items": ["a"], "colour": "red"}'):
        outcome = await run_handler(handler, body, settings=kit_settings())
        assert isinstance(outcome, DeadLettered) and outcome.reason == "invalid"
        assert isinstance(outcome.error, InvalidMessage)
    assert calls == []


async def test_an_invalid_message_raised_by_the_handler_itself_is_retried_as_the_consumer_does() -> None:
    async def handler(order: Order) -> None:
        raise InvalidMessage("the handler's own")

    outcome = await run_handler(handler, ORDER, settings=kit_settings())
    assert isinstance(outcome, Retried) and outcome.next_attempt == 2


async def test_a_users_order_model_from_a_mapping_or_an_instance() -> None:
    settings = kit_settings(order_model="tests.test_testing:Parcel")
    weights: list[int] = []

    async def handle(order: Parcel) -> None:
        weights.append(order.weight_grams)

    assert await run_handler(handle, {"order_id": "p-1", "weight_grams": 250}, settings=settings) == Acked()
    assert await run_handler(handle, Parcel(order_id="p-2", weight_grams=900)) == Acked()
    refused = await run_handler(handle, {"order_id": "p-3", "weight_grams": 0}, settings=settings)
    assert isinstance(refused, DeadLettered) and refused.reason == "invalid"
    assert weights == [250, 900]


async def test_a_plain_function_runs_in_a_thread_with_its_delivery() -> None:
    seen: list[tuple[str, int]] = []

    def handler(order: Order) -> None:
        assert threading.current_thread() is not threading.main_thread()
        seen.append((order.order_id, current_delivery().attempt))

    assert await run_handler(handler, ORDER, attempt=2, settings=kit_settings()) == Acked()
    assert seen == [("o-1", 2)]


async def test_a_handler_that_overruns_its_timeout_fails_with_a_timeout_error() -> None:
    settings = kit_settings(handler_timeout=0.2)

    async def hangs(order: Order) -> None:
        await asyncio.Event().wait()

    outcome = await run_handler(hangs, ORDER, settings=settings)
    assert isinstance(outcome, Retried) and outcome.next_attempt == 2
    assert isinstance(outcome.error, TimeoutError) and "ORDERLANE_HANDLER_TIMEOUT" in str(outcome.error)
    last = await run_handler(hangs, ORDER, attempt=5, settings=settings)
    assert isinstance(last, DeadLettered) and last.reason == "exhausted"
    assert isinstance(last.error, TimeoutError)


async def test_a_plain_function_that_overruns_its_timeout_fails_too() -> None:
    release = threading.Event()

    def stuck(order: Order) -> None:
        release.wait(30)

    try:
        outcome = await run_handler(stuck, ORDER, settings=kit_settings(handler_timeout=0.2))
    finally:
        release.set()  # the abandoned thread ends
    assert isinstance(outcome, Retried) and isinstance(outcome.error, TimeoutError)


async def test_an_attempt_counts_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        await run_handler(fails, ORDER, attempt=0, settings=kit_settings())


@pytest.mark.parametrize("lanes", ["", "high:0-2,default:3-9"])
async def test_harness_a_vip_order_posted_after_a_backlog_is_handled_first(lanes: str) -> None:
    """One handler slot, busy with the first order while a backlog and then a VIP order arrive: the VIP is next,
    the backlog follows in its order (one queue or two lanes alike)."""
    started, release = asyncio.Event(), asyncio.Event()
    handled: list[str] = []

    async def handler(order: Order) -> None:
        handled.append(order.order_id)
        if order.order_id == "first":
            started.set()
            await release.wait()

    async with OrderlaneHarness(handler, settings=kit_settings(lanes=lanes)) as harness:
        await harness.client.post("/orders", json={"order_id": "first", "items": ["a"]})
        async with asyncio.timeout(10):
            await started.wait()
        for n in range(4):
            await harness.client.post("/orders", json={"order_id": f"r-{n}", "priority": 5, "items": ["a"]})
        vip = {"order_id": "vip", "priority": 9, "user_type": "vip", "items": ["a"]}
        assert (await harness.client.post("/orders", json=vip)).status_code == 202
        release.set()
        await harness.drain()
        states = {(await harness.client.get(f"/orders/{order_id}")).json()["state"] for order_id in handled}
    assert handled == ["first", "vip", "r-0", "r-1", "r-2", "r-3"]
    assert states == {"processed"}


async def test_harness_a_failing_order_is_retried_and_processed() -> None:
    deliveries: list[Delivery] = []

    async def fails_once(order: Order) -> None:
        deliveries.append(current_delivery())
        if len(deliveries) == 1:
            raise ValueError("the warehouse is busy")

    async with OrderlaneHarness(fails_once, settings=kit_settings()) as harness:
        assert (await harness.client.post("/orders", json=ORDER)).status_code == 202
        await harness.drain()
        status = (await harness.client.get("/orders/o-1")).json()
    assert [(d.attempt, d.redelivered) for d in deliveries] == [(1, False), (2, False)]
    assert (status["state"], status["attempt"]) == ("processed", 2)
    assert status["last_error"] == "ValueError: the warehouse is busy"
    assert harness.dead_letters == []


async def test_harness_a_permanent_failure_is_dead_lettered() -> None:
    async def refuse(order: Order) -> None:
        raise PermanentFailure("no such address")

    async with OrderlaneHarness(refuse, settings=kit_settings()) as harness:
        await harness.client.post("/orders", json=ORDER)
        await harness.drain()
        status = (await harness.client.get("/orders/o-1")).json()
    assert (status["state"], status["last_error"]) == ("dead_lettered", "PermanentFailure: no such address")
    [dead] = harness.dead_letters
    assert (dead.order, dead.reason, dead.attempt) == (Order(order_id="o-1", items=["a"]), "permanent", 1)
    assert str(dead.error) == "no such address"


async def test_harness_an_invalid_order_is_refused_by_the_api_and_nothing_is_published() -> None:
    calls: list[Order] = []

    async def handler(order: Order) -> None:
        calls.append(order)

    async with OrderlaneHarness(handler, settings=kit_settings()) as harness:
        answer = await harness.client.post("/orders", json={"order_id": "o-1", "items": []})
        await harness.drain()
    assert answer.status_code == 422
    assert harness.published == [] and calls == []


async def test_harness_the_same_order_posted_twice_is_published_once() -> None:
    calls: list[str] = []

    async def handler(order: Order) -> None:
        calls.append(order.order_id)

    async with OrderlaneHarness(handler, settings=kit_settings()) as harness:
        first = await harness.client.post("/orders", json=ORDER)
        await harness.drain()
        again = await harness.client.post("/orders", json=ORDER)
        await harness.drain()
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["state"] == "processed"
    assert harness.published == [Order(order_id="o-1", items=["a"])] and calls == ["o-1"]


async def test_the_memory_broker_requeues_in_place_and_returns_what_no_queue_takes() -> None:
    memory = MemoryBroker(kit_settings())
    for order_id in ("a", "b"):
        await memory.publish(Order(order_id=order_id, items=["x"]))
    first = await memory.take()
    first.requeue()
    again = await memory.take()
    assert (again.message_id, again.redelivered, memory.outstanding) == ("a", True, 2)
    with pytest.raises(PublishError, match="returned"):
        await memory.republish(again.body, again.properties, "kit.nowhere")
    again.ack()
    await memory.republish(again.body, again.properties, "kit")  # as a replay of a dead letter would: at the back
    assert [(await memory.take()).message_id for _ in range(2)] == ["b", "a"]
    assert memory.outstanding == 2


async def test_harness_without_a_status_store_as_a_deployment_without_one() -> None:
    calls: list[str] = []

    async def handler(order: Order) -> None:
        calls.append(order.order_id)

    async with OrderlaneHarness(handler, settings=kit_settings(status_url="")) as harness:
        answers = [(await harness.client.post("/orders", json=ORDER)).status_code for _ in range(2)]
        await harness.drain()
        status = await harness.client.get("/orders/o-1")
    assert answers == [202, 202] and calls == ["o-1", "o-1"]  # no deduplication without the store
    assert (status.status_code, status.json()["details"][0]["type"]) == (404, "status_disabled")


async def test_harness_runs_a_plain_function_in_threads() -> None:
    threads: list[str] = []

    def handler(order: Order) -> None:
        threads.append(threading.current_thread().name)

    async with OrderlaneHarness(handler, settings=kit_settings(concurrency=2)) as harness:
        for n in range(3):
            await harness.client.post("/orders", json={"order_id": f"o-{n}", "items": ["a"]})
        await harness.drain()
    assert len(threads) == 3 and all(name.startswith("orderlane-handler-") for name in threads)


async def test_harness_drain_gives_up_saying_how_much_is_unsettled() -> None:
    async def hangs(order: Order) -> None:
        await asyncio.Event().wait()

    async with OrderlaneHarness(hangs, settings=kit_settings()) as harness:
        await harness.client.post("/orders", json=ORDER)
        with pytest.raises(TimeoutError, match="1 messages still unsettled"):
            await harness.drain(within=0.2)


class Unreachable:
    async def __aenter__(self) -> Unreachable:
        raise ConnectionError("the database does not answer")

    async def __aexit__(self, *exc: object) -> None:
        raise AssertionError("never entered, never exited")

    async def __call__(self, order: Order) -> None:
        raise AssertionError("never called")


async def test_harness_that_cannot_start_says_why_and_offers_no_client() -> None:
    harness = OrderlaneHarness(Unreachable(), settings=kit_settings())
    with pytest.raises(ConnectionError, match="does not answer"):
        async with harness:
            pass
    with pytest.raises(RuntimeError, match="async with"):
        harness.client  # noqa: B018 - the property refuses


class Lifespan:
    """A handler with a lifespan, as a shop's that opens a database pool on enter: it notes what happens to it."""

    def __init__(self, release: asyncio.Event | None = None) -> None:
        self.events: list[str] = []
        self.release = release

    async def __aenter__(self) -> Lifespan:
        self.events.append("entered")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.events.append("exited")

    async def __call__(self, order: Order) -> None:
        self.events.append(f"called {order.order_id}")
        if self.release is not None:
            await self.release.wait()
        self.events.append(f"returned {order.order_id}")


async def test_harness_enters_a_handler_with_a_lifespan_first_and_exits_it_last() -> None:
    handler = Lifespan()
    async with OrderlaneHarness(handler, settings=kit_settings()) as harness:
        assert handler.events == ["entered"]
        await harness.client.post("/orders", json=ORDER)
        await harness.drain()
    assert handler.events == ["entered", "called o-1", "returned o-1", "exited"]


async def test_the_consumer_enters_a_handler_with_a_lifespan_before_its_first_delivery_and_exits_it_after_stop(
    settings: Settings, broker: Broker
) -> None:
    """On the real broker: SIGTERM while the handler runs; the handler is exited after its order has settled."""
    release = asyncio.Event()
    handler = Lifespan(release)
    await publish_raw(settings.queue, order_message("o-1"))
    consuming = asyncio.create_task(consume_until_stopped(settings, handler, prefetch=1, concurrency=1))
    try:
        await wait_until(lambda: "called o-1" in handler.events, what="the handler called")
        os.kill(os.getpid(), signal.SIGTERM)  # consume_until_stopped's own handler takes it: a graceful stop
        await wait_until(lambda: consumers_are(settings.queue, 0), what="the stop under way")
        assert handler.events == ["entered", "called o-1"]
        release.set()
        async with asyncio.timeout(30):
            await consuming
    finally:
        consuming.cancel()
        await asyncio.gather(consuming, return_exceptions=True)
    assert handler.events == ["entered", "called o-1", "returned o-1", "exited"]
    assert await depth_is(settings.queue, 0), "settled (acked) before the stop ended"


async def test_the_memory_broker_refuses_a_delivery_settled_twice() -> None:
    """RabbitMQ closes the channel on a second ack of one delivery tag; the harness must not let it pass."""
    memory = MemoryBroker(Settings(status_url=None))
    await memory.publish(Order(order_id="twice", items=["a"]))
    message = await memory.take()
    message.ack()
    with pytest.raises(RuntimeError, match="settled twice"):
        message.ack()
    with pytest.raises(RuntimeError, match="settled twice"):
        message.requeue()
    assert memory.outstanding == 0
