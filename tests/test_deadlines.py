"""Order deadlines (docs/deadlines.md): the field and its body, the decision (pure), the 422 at intake, and on the
real broker and status store: orders taken after their deadline expire (dead-lettered, status `expired`, counted)
and never reach the handler, and a retry that would start after the deadline expires the order at once."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime
from typing import Any

import aio_pika
import httpx
import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from broker.client import AsyncOrderClient
from broker.connection import Broker
from broker.errors import DeadlinePassed
from broker.headers import ATTEMPT_HEADER, ATTEMPTS_HEADER, CHECK_PROCESSED_HEADER, ERROR_HEADER, ERROR_TYPE_HEADER
from broker.messages import Order, encode_order
from broker.settings import Settings
from broker.status import Transition, fingerprint
from broker.status_store import StatusStore
from consumers.decisions import DeadLettered, Retried, decide, expiry
from consumers.delivery import current_delivery
from consumers.dlq import peek_dead_letters, replay_dead_letters
from consumers.retry import RetryPolicy
from consumers.runner import Consumer
from consumers.testing import OrderlaneHarness, run_handler
from tests.amqp import drain, lane_queue, publish_raw, queue_depth, wait_until
from tests.consuming import consuming

NOW = 1_800_000_000.0
"""A fixed "now" for the pure decisions, seconds since the epoch."""
SLOW_RETRIES = {"retry_base_seconds": 60.0, "retry_max_seconds": 60.0}
"""A failed attempt comes back in 48 to 72 s (the backoff's jitter is 20 %)."""


def at(seconds: float) -> datetime:
    """`seconds` since the epoch as an aware datetime."""
    return datetime.fromtimestamp(seconds, UTC)


def from_now(seconds: float) -> datetime:
    return at(time.time() + seconds)


def order(order_id: str, deadline: datetime | None = None) -> Order:
    return Order(order_id=order_id, items=["book"], deadline=deadline)


def posted(order_id: str, deadline: datetime | None = None) -> dict[str, Any]:
    """An order as a client posts it: the deadline in RFC 3339."""
    return order(order_id, deadline).model_dump(mode="json")


def message(order_id: str, deadline: datetime | None, **headers: object) -> aio_pika.Message:
    """An order as a raw AMQP message, published past the API (which would refuse a passed deadline)."""
    return aio_pika.Message(
        encode_order(order(order_id, deadline)),
        content_type="application/json",
        message_id=order_id,
        headers=headers,  # type: ignore[arg-type]
    )


async def state_is(store: StatusStore, order_id: str, state: str) -> bool:
    status = await store.get(order_id)
    return status is not None and status.state == state


async def states_are(store: StatusStore, state: str, *order_ids: str) -> bool:
    return all([await state_is(store, order_id, state) for order_id in order_ids])


def counted(consumer: Consumer, name: str, **labels: str) -> float:
    return consumer.metrics.registry.get_sample_value(name, labels) or 0.0


async def clock_passes(deadline: datetime) -> None:
    """Wait until the wall clock is past `deadline`: what the test waits for is the clock, not a guess."""
    await wait_until(lambda: time.time() > deadline.timestamp(), what=f"the clock passes {deadline}")


# --- the field ----------------------------------------------------------------------------------------------------


def test_an_order_without_a_deadline_has_the_body_and_fingerprint_it_had_before() -> None:
    before = b'{"order_id":"A-1","priority":3,"user_type":"regular","items":["book"]}'  # the body before deadlines
    for spelled in (
        {"order_id": "A-1", "priority": 3, "items": ["book"]},
        {"order_id": "A-1", "priority": 3, "items": ["book"], "deadline": None},
    ):
        body = encode_order(Order.model_validate(spelled))
        assert body == before
        assert fingerprint(body) == fingerprint(before)


def test_a_deadline_travels_in_utc_and_a_time_without_an_offset_is_refused() -> None:
    in_paris = Order.model_validate_json('{"order_id":"A-1","items":["book"],"deadline":"2026-12-06T13:00:00+01:00"}')
    in_utc = Order.model_validate_json('{"order_id":"A-1","items":["book"],"deadline":"2026-12-06T12:00:00Z"}')
    assert b'"deadline":"2026-12-06T12:00:00Z"' in encode_order(in_paris)
    assert fingerprint(encode_order(in_paris)) == fingerprint(encode_order(in_utc)), "one instant, one order"
    with pytest.raises(ValidationError) as naive:
        Order.model_validate_json('{"order_id":"A-1","items":["book"],"deadline":"2026-12-06T12:00:00"}')
    assert naive.value.errors()[0]["type"] == "timezone_aware"
    with pytest.raises(ValidationError):
        Order(order_id="A-1", items=["book"], deadline=datetime(2026, 12, 6, 12))


# --- the decision (pure) ------------------------------------------------------------------------------------------


def test_an_order_past_its_deadline_expires_before_its_handler_starts() -> None:
    late = expiry(order("o", deadline=at(NOW - 1)), NOW)
    assert isinstance(late, DeadLettered) and late.reason == "expired"
    assert isinstance(late.error, DeadlinePassed) and late.error.order_id == "o"
    assert "passed before its handler started" in str(late.error)
    assert expiry(order("o", deadline=at(NOW)), NOW) is not None, "at its deadline it has passed"
    assert expiry(order("o", deadline=at(NOW + 1)), NOW) is None
    assert expiry(order("o"), NOW) is None


def test_a_retry_that_would_start_after_the_deadline_expires_the_order_now() -> None:
    policy = RetryPolicy(max_attempts=5, base_seconds=10.0, max_seconds=10.0)  # a retry in 8 to 12 s
    failure = RuntimeError("the warehouse is down")

    def after_failure(deadline: datetime | None) -> object:
        return decide(failure, 1, policy, random.Random(1), order=order("o", deadline), now=NOW)

    late = after_failure(at(NOW + 5))
    assert isinstance(late, DeadLettered) and late.reason == "expired"
    assert isinstance(late.error, DeadlinePassed) and "comes before its retry" in str(late.error)
    assert "the warehouse is down" in str(late.error), "the attempt's own failure is kept"
    assert isinstance(after_failure(at(NOW + 60)), Retried)
    assert isinstance(after_failure(None), Retried)
    last = decide(failure, 5, policy, random.Random(1), order=order("o", at(NOW + 5)), now=NOW)
    assert isinstance(last, DeadLettered) and last.reason == "exhausted", "no retry left: nothing to wait for"


# --- intake -------------------------------------------------------------------------------------------------------


async def test_an_order_past_its_deadline_is_refused_422_and_nothing_is_published(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    refused = await client.post("/orders", json=posted("late", deadline=from_now(-1)))
    assert refused.status_code == 422, refused.text
    assert refused.json()["details"][0]["type"] == "deadline_passed"
    naive = await client.post("/orders", json={**posted("naive"), "deadline": "2999-01-01T00:00:00"})
    assert naive.status_code == 422 and naive.json()["details"][0]["type"] == "timezone_aware"
    assert await queue_depth(lane_queue(settings, 5)) == 0
    assert (await client.get("/orders/late")).status_code == 404, "nothing reserved either"

    in_time = await client.post("/orders", json=posted("in-time", deadline=from_now(3600)))
    assert in_time.status_code == 202, in_time.text
    [published] = await drain(lane_queue(settings, 5))
    assert Order.model_validate_json(published.body).deadline is not None


async def test_a_repost_after_the_deadline_of_an_order_taken_in_time_is_answered_from_its_status(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    deadline = from_now(1)
    assert (await client.post("/orders", json=posted("soon", deadline))).status_code == 202
    await clock_passes(deadline)
    again = await client.post("/orders", json=posted("soon", deadline))  # its first answer was lost, say
    assert again.status_code == 200 and again.json()["state"] == "accepted", again.text
    assert await queue_depth(lane_queue(settings, 5)) == 1


async def test_the_python_client_raises_deadline_passed(settings: Settings) -> None:
    deadline = from_now(-1)
    async with AsyncOrderClient(settings, registry=CollectorRegistry()) as orders:
        with pytest.raises(DeadlinePassed) as refused:
            await orders.submit(order("late", deadline))
    assert (refused.value.order_id, refused.value.deadline) == ("late", deadline)
    assert await queue_depth(lane_queue(settings, 5)) == 0


# --- the consumer -------------------------------------------------------------------------------------------------


async def test_orders_whose_deadline_passed_in_the_queue_expire_and_never_reach_the_handler(
    client: httpx.AsyncClient, broker: Broker, store: StatusStore, settings: Settings
) -> None:
    """The issue's scenario, small: orders accepted in time wait behind a backlog (a held handler) past their
    deadline."""
    handled: list[str] = []
    release = asyncio.Event()

    async def handler(order: Order) -> None:
        handled.append(order.order_id)
        if order.order_id == "backlog":
            await release.wait()

    async with consuming(broker, handler, settings, store) as consumer:
        assert (await client.post("/orders", json=posted("backlog"))).status_code == 202
        await wait_until(lambda: handled == ["backlog"], what="the backlog holds the only handler slot")
        deadline = from_now(2)
        for order_id in ("late-1", "late-2"):
            assert (await client.post("/orders", json=posted(order_id, deadline))).status_code == 202
        assert (await client.post("/orders", json=posted("in-time", from_now(3600)))).status_code == 202
        assert (await client.post("/orders", json=posted("plain"))).status_code == 202
        await clock_passes(deadline)
        release.set()
        await wait_until(lambda: states_are(store, "expired", "late-1", "late-2"), what="the late orders expired")
        await wait_until(lambda: state_is(store, "plain", "processed"), what="the orders behind them processed")
        expired = counted(consumer, "orderlane_orders_expired_total", priority="5")
        dead = counted(consumer, "orderlane_orders_dead_lettered_total", priority="5", reason="expired")
    assert handled == ["backlog", "in-time", "plain"]
    assert (expired, dead) == (2, 2)

    status = (await client.get("/orders/late-1")).json()
    assert status["state"] == "expired" and status["last_error"].startswith("DeadlinePassed: ")
    assert set(status["at"]) == {"accepted", "expired"}, "it never started"
    letters = await drain(settings.dead_letter_queue)
    assert [letter.message_id for letter in letters] == ["late-1", "late-2"]
    for letter in letters:
        assert letter.headers[ERROR_TYPE_HEADER] == "DeadlinePassed"
        assert "passed before its handler started" in str(letter.headers[ERROR_HEADER])
        assert letter.headers[ATTEMPTS_HEADER] == 0


async def test_retry_copies_expire_too_a_processed_order_stays_processed_and_a_replay_expires_again(
    broker: Broker, store: StatusStore, settings: Settings
) -> None:
    handled: list[str] = []

    async def handler(order: Order) -> None:
        handled.append(order.order_id)

    passed = from_now(-1)
    await store.record(Transition("done-in-time", "processed", 1, time.time(), {"queue": settings.queue}))
    await publish_raw(
        lane_queue(settings, 5),
        message("late", passed),
        message("late-retry", passed, **{ATTEMPT_HEADER: 3, CHECK_PROCESSED_HEADER: True}),  # back from a delay queue
        message("done-in-time", passed, **{CHECK_PROCESSED_HEADER: True}),  # its ack was lost, say
        message("on-time", from_now(3600)),
    )
    async with consuming(broker, handler, settings, store) as consumer:
        await wait_until(lambda: handled == ["on-time"], what="the order within its deadline handled")
        await wait_until(lambda: states_are(store, "expired", "late", "late-retry"), what="the late orders expired")
        await wait_until(lambda: consumer.metrics.already_processed._value.get() == 1, what="the processed copy acked")
        assert await state_is(store, "done-in-time", "processed"), "expired never overwrites processed"
        letters, count = await peek_dead_letters(broker, settings, 10)
        by_id = {letter.message_id: letter for letter in letters}
        assert count == 2 and set(by_id) == {"late", "late-retry"}
        assert by_id["late"].error_type == "DeadlinePassed" and by_id["late"].attempts == 0
        assert by_id["late-retry"].attempts == 2, "attempts 1 and 2 were made, the 3rd never began"
        retried = await store.get("late-retry")
        assert retried is not None and retried.attempt == 2

        first_round = counted(consumer, "orderlane_orders_expired_total", priority="5")
    assert first_round == 2

    assert sorted(await replay_dead_letters(broker, settings, 10, store)) == ["late", "late-retry"]
    assert await states_are(store, "replayed", "late", "late-retry"), "an expired order is replayed as a dead one"
    async with consuming(broker, handler, settings, store) as consumer:
        await wait_until(lambda: states_are(store, "expired", "late", "late-retry"), what="expired again at once")
        second_round = counted(consumer, "orderlane_orders_expired_total", priority="5")
    assert second_round == 2, "unless its deadline is changed, a replayed order expires again"
    assert handled == ["on-time"]


async def test_a_failed_attempt_whose_retry_would_start_after_the_deadline_expires_at_once(
    broker: Broker, store: StatusStore, settings: Settings
) -> None:
    slow = settings.model_copy(update=SLOW_RETRIES)
    attempts: list[tuple[str, int]] = []

    async def handler(order: Order) -> None:
        attempts.append((order.order_id, current_delivery().attempt))
        raise RuntimeError("the warehouse is down")

    await publish_raw(lane_queue(slow, 5), message("soon", from_now(30)), message("later", from_now(3600)))
    async with consuming(broker, handler, slow, store) as consumer:
        await wait_until(lambda: state_is(store, "soon", "expired"), what="soon expired after its failed attempt")
        await wait_until(lambda: state_is(store, "later", "retrying"), what="later waits for its retry")
        expired = counted(consumer, "orderlane_orders_expired_total", priority="5")
        retried = counted(consumer, "orderlane_orders_retried_total", priority="5")
    assert attempts == [("soon", 1), ("later", 1)]
    assert (expired, retried) == (1, 1)
    soon = await store.get("soon")
    assert soon is not None and soon.attempt == 1 and "processing" in soon.at
    assert soon.last_error is not None and "comes before its retry" in soon.last_error
    assert "the warehouse is down" in soon.last_error
    [letter] = await drain(slow.dead_letter_queue)
    assert (letter.message_id, letter.headers[ATTEMPTS_HEADER]) == ("soon", 1)
    assert await queue_depth(broker.topology.lane_for(5).retry_queue(1).name) == 1, "only later waits to retry"


# --- the test kit -------------------------------------------------------------------------------------------------


async def test_run_handler_expires_an_order_past_its_deadline_without_calling_the_handler() -> None:
    calls: list[str] = []

    async def handler(order: Order) -> None:
        calls.append(order.order_id)
        raise RuntimeError("the warehouse is down")

    settings = Settings(queue="kit", status_url=None, **SLOW_RETRIES)  # type: ignore[arg-type]
    late = await run_handler(handler, order("late", from_now(-1)), settings=settings)
    assert isinstance(late, DeadLettered) and late.reason == "expired"
    assert calls == []
    too_late_to_retry = await run_handler(handler, order("soon", from_now(30)), settings=settings)
    assert isinstance(too_late_to_retry, DeadLettered) and too_late_to_retry.reason == "expired"
    assert isinstance(await run_handler(handler, order("later", from_now(3600)), settings=settings), Retried)
    assert calls == ["soon", "later"]


async def test_harness_an_order_that_waited_past_its_deadline_is_dead_lettered_expired() -> None:
    handled: list[str] = []
    release = asyncio.Event()

    async def handler(order: Order) -> None:
        handled.append(order.order_id)
        await release.wait()

    settings = Settings(queue="kit", concurrency=1)
    async with OrderlaneHarness(handler, settings=settings) as harness:
        assert (await harness.client.post("/orders", json=posted("backlog"))).status_code == 202
        await wait_until(lambda: handled == ["backlog"], what="the backlog holds the only handler slot")
        deadline = from_now(1)
        assert (await harness.client.post("/orders", json=posted("late", deadline))).status_code == 202
        await clock_passes(deadline)
        release.set()
        await harness.drain()
        status = (await harness.client.get("/orders/late")).json()
    assert handled == ["backlog"]
    assert status["state"] == "expired"
    [dead] = harness.dead_letters
    assert (dead.order, dead.reason, dead.attempt) == (order("late", deadline), "expired", 1)
    assert isinstance(dead.error, DeadlinePassed)
