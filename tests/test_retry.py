"""Retries with backoff, dead letters with reasons, and the handler timeout, on the real broker."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import aio_pika

from broker.connection import Broker
from broker.errors import PermanentFailure
from broker.headers import ATTEMPT_HEADER, ATTEMPTS_HEADER, ERROR_HEADER, ERROR_TYPE_HEADER
from broker.messages import Order
from broker.settings import Settings
from broker.topology import build_topology
from consumers.delivery import current_delivery
from consumers.retry import RetryPolicy, dead_letter_message, replay_message, retry_message
from tests.amqp import depth_is, drain, publish_raw, queue_depth, wait_until
from tests.consuming import consuming, order_message


def test_backoff_doubles_from_the_base_up_to_the_cap_with_bounded_jitter() -> None:
    policy = RetryPolicy(max_attempts=10, base_seconds=1.0, max_seconds=30.0)
    rng = random.Random(7)
    for failed_attempt, nominal in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (9, 30.0)]:
        delays = [policy.delay_seconds(failed_attempt, rng) for _ in range(200)]
        assert nominal * 0.8 <= min(delays) < max(delays) <= nominal * 1.2


def test_retries_until_the_last_attempt() -> None:
    policy = RetryPolicy(max_attempts=3, base_seconds=1, max_seconds=1)
    assert [policy.should_retry(attempt) for attempt in (1, 2, 3)] == [True, True, False]


def test_one_delay_queue_per_retry_step_each_leading_back_to_work() -> None:
    topology = build_topology(Settings(queue="shop", max_attempts=4))
    lane = topology.lanes[-1]  # the least urgent: the queue itself
    assert [spec.name for spec in lane.retries] == ["shop.retry.1", "shop.retry.2", "shop.retry.3"]
    assert {spec.arguments["x-dead-letter-routing-key"] for spec in lane.retries} == {"shop"}
    assert lane.retry_queue(2).name == "shop.retry.2"


def delivered_message() -> aio_pika.Message:
    return aio_pika.Message(
        b'{"order_id":"o-1","priority":2,"items":["a"],"user_type":"regular"}',
        headers={"x-orderlane-priority": 2, "x-death": [{"count": 1}], ATTEMPT_HEADER: 2, "trace": "abc"},
        content_type="application/json",
        priority=7,
        correlation_id="c-1",
        message_id="o-1",
    )


def test_copies_keep_the_order_and_priority_and_drop_broker_headers() -> None:
    incoming = delivered_message()
    retry = retry_message(incoming, next_attempt=3, delay_seconds=0.25)
    dead = dead_letter_message(incoming, error_type="ValueError", error="x" * 5000, attempts=5)
    for copy in (retry, dead):
        assert (copy.body, copy.priority, copy.message_id) == (incoming.body, 7, "o-1")
        assert copy.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert "x-death" not in copy.headers and copy.headers["trace"] == "abc"
    assert retry.headers[ATTEMPT_HEADER] == 3
    assert retry.properties.expiration == "250"
    assert (dead.headers[ERROR_TYPE_HEADER], dead.headers[ATTEMPTS_HEADER]) == ("ValueError", 5)
    assert len(str(dead.headers[ERROR_HEADER])) == 1000
    replayed = replay_message(incoming)
    assert ATTEMPT_HEADER not in replayed.headers and replayed.priority == 7


async def test_poison_order_is_tried_max_attempts_times_then_dead_lettered_while_others_flow(
    settings: Settings, broker: Broker
) -> None:
    await publish_raw(settings.queue, order_message("poison"), *(order_message(f"ok-{n}") for n in range(20)))
    attempts: list[int] = []
    processed: list[str] = []
    all_ok = asyncio.Event()

    async def handler(order: Order) -> None:
        if order.order_id == "poison":
            attempts.append(current_delivery().attempt)
            raise ValueError("cannot ship to the moon")
        processed.append(order.order_id)
        if len(processed) == 20:
            all_ok.set()

    async with consuming(broker, handler, settings):
        async with asyncio.timeout(30):
            await all_ok.wait()
        assert len(attempts) < settings.max_attempts, "the others must not wait behind the poison's retries"
        await wait_until(lambda: depth_is(settings.dead_letter_queue, 1), what="poison in the DLQ")
    assert attempts == [1, 2, 3, 4, 5]
    [dead] = await drain(settings.dead_letter_queue)
    assert dead.message_id == "poison"
    assert dead.headers[ERROR_TYPE_HEADER] == "ValueError"
    assert dead.headers[ERROR_HEADER] == "cannot ship to the moon"
    assert dead.headers[ATTEMPTS_HEADER] == 5
    assert sorted(processed) == sorted(f"ok-{n}" for n in range(20))


async def test_permanent_failure_skips_the_retries(settings: Settings, broker: Broker) -> None:
    await publish_raw(settings.queue, order_message("bad-address"))
    calls: Counter[str] = Counter()

    async def refuse(order: Order) -> None:
        calls[order.order_id] += 1
        raise PermanentFailure("no such address")

    async with consuming(broker, refuse, settings):
        await wait_until(lambda: depth_is(settings.dead_letter_queue, 1), what="the order in the DLQ")
    assert calls == {"bad-address": 1}
    [dead] = await drain(settings.dead_letter_queue)
    assert (dead.headers[ERROR_TYPE_HEADER], dead.headers[ATTEMPTS_HEADER]) == ("PermanentFailure", 1)


async def test_a_handler_that_overruns_its_timeout_goes_through_the_retry_path(
    settings: Settings, broker: Broker
) -> None:
    settings = settings.model_copy(update={"handler_timeout": 0.2})
    await publish_raw(settings.queue, order_message("slow"))
    attempts: list[int] = []
    done = asyncio.Event()

    async def hangs_once(order: Order) -> None:
        attempts.append(current_delivery().attempt)
        if len(attempts) == 1:
            await asyncio.Event().wait()
        done.set()

    async with consuming(broker, hangs_once, settings):
        async with asyncio.timeout(30):
            await done.wait()
    assert attempts == [1, 2]


async def test_timeout_on_the_last_attempt_dead_letters_with_the_reason(settings: Settings, broker: Broker) -> None:
    settings = settings.model_copy(update={"handler_timeout": 0.1, "max_attempts": 1})
    await publish_raw(settings.queue, order_message("stuck"))

    async def hangs(order: Order) -> None:
        await asyncio.Event().wait()

    async with consuming(broker, hangs, settings):
        await wait_until(lambda: depth_is(settings.dead_letter_queue, 1), what="the order in the DLQ")
    [dead] = await drain(settings.dead_letter_queue)
    assert dead.headers[ERROR_TYPE_HEADER] == "TimeoutError"
    assert "ORDERLANE_HANDLER_TIMEOUT" in str(dead.headers[ERROR_HEADER])


async def test_an_attempt_header_out_of_range_cannot_stall_the_consumer(settings: Settings, broker: Broker) -> None:
    """Headers are untrusted: attempt -10 counts as attempt 1, and the order goes through the retries as usual."""
    await publish_raw(settings.queue, order_message("forged", headers={ATTEMPT_HEADER: -10}), order_message("next"))
    attempts: list[int] = []
    retried = asyncio.Event()

    async def fails_first(order: Order) -> None:
        if order.order_id == "next":
            return
        attempts.append(current_delivery().attempt)
        if len(attempts) == 1:
            raise ValueError("first try fails")
        retried.set()

    async with consuming(broker, fails_first, settings):
        async with asyncio.timeout(30):
            await retried.wait()
        await wait_until(lambda: depth_is(settings.queue, 0), what="both settled")
    assert attempts == [1, 2]


async def test_after_a_timeout_the_same_slot_runs_the_next_order_in_full(settings: Settings, broker: Broker) -> None:
    """A handler slot is a long-lived task: the watchdog's cancellation of one order must not reach the next."""
    settings = settings.model_copy(update={"handler_timeout": 0.3, "max_attempts": 1})
    await publish_raw(settings.queue, order_message("hangs"), order_message("steady"))
    finished: list[tuple[str, int]] = []

    async def handler(order: Order) -> None:
        if order.order_id == "hangs":
            await asyncio.Event().wait()
        await asyncio.sleep(0.2)  # most of the timeout, across several watchdog ticks
        finished.append((order.order_id, current_delivery().attempt))

    async with consuming(broker, handler, settings):
        await wait_until(lambda: depth_is(settings.dead_letter_queue, 1), what="the hanging order dead-lettered")
        await wait_until(lambda: finished == [("steady", 1)], what="the next order handled once, in full")
    assert await queue_depth(settings.queue) == 0
