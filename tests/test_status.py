"""Order status and idempotent intake, on the real Redis and RabbitMQ: the store's records, `GET /orders/{id}`,
a repost answered 200 and a clash 409, and the consumer's transitions."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from api.app import create_app
from broker.connection import Broker, open_broker
from broker.errors import PermanentFailure, StatusUnavailable
from broker.headers import CHECK_PROCESSED_HEADER
from broker.messages import Order, encode_order
from broker.settings import Settings
from broker.status import FINAL_RANK, Transition, fingerprint, rank_of
from broker.status_store import Reserved, StatusStore, Taken, open_status_store
from consumers.delivery import current_delivery
from consumers.dlq import replay_dead_letters
from consumers.status import describe_error
from tests.amqp import delete_queues, depth_is, drain, publish_raw, queue_depth, wait_until
from tests.consuming import consuming, order_message
from tests.http import app_client

ORDER = {"order_id": "A-1", "priority": 3, "items": ["book"], "user_type": "regular"}


def transition(order_id: str, state: str, attempt: int) -> Transition:
    return Transition(order_id, state, attempt=attempt, at=1_700_000_000.0, fields={"queue": "q"})  # type: ignore[arg-type]


async def accept(store: StatusStore, order_id: str, token: str) -> None:
    store.accept(transition(order_id, "accepted", 0), token)
    await store.settled()


async def metric(client: httpx.AsyncClient, line_start: str) -> float:
    text = (await client.get("/metrics")).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
    return sum(values)


# --- pure functions -----------------------------------------------------------------------------------------------


def test_ranks_only_move_forward() -> None:
    steps = [
        rank_of("pending", 0),
        rank_of("accepted", 0),
        rank_of("processing", 1),
        rank_of("retrying", 1),
        rank_of("processing", 2),
        rank_of("retrying", 2),
        rank_of("processing", 50),
        rank_of("processed", 2),
    ]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    assert rank_of("dead_lettered", 5) == rank_of("processed", 1) == FINAL_RANK
    assert rank_of("replayed", 0) == rank_of("accepted", 0)


def test_fingerprint_is_the_order_not_its_spelling() -> None:
    spelled_out = Order.model_validate({"order_id": "x", "items": ["a"], "priority": 5, "user_type": "regular"})
    defaults = Order.model_validate({"order_id": "x", "items": ["a"]})
    other = Order.model_validate({"order_id": "x", "items": ["b"]})
    assert fingerprint(encode_order(spelled_out)) == fingerprint(encode_order(defaults))
    assert fingerprint(encode_order(other)) != fingerprint(encode_order(defaults))


# --- the store ----------------------------------------------------------------------------------------------------


async def test_a_reservation_belongs_to_its_token_until_accepted_or_released(
    store: StatusStore, settings: Settings
) -> None:
    assert await store.reserve("o-1", "print-1", "token-1") == Reserved(retaken=False)
    taken = await store.reserve("o-1", "print-2", "token-2")
    assert isinstance(taken, Taken) and taken.status.state == "pending" and taken.fingerprint == "print-1"

    await accept(store, "o-1", "token-2")  # not its reservation: ignored
    assert (await store.get("o-1")).state == "pending"  # type: ignore[union-attr]
    await accept(store, "o-1", "token-1")
    accepted = await store.get("o-1")
    assert accepted is not None and accepted.state == "accepted" and accepted.queue == "q"
    assert set(accepted.at) == {"accepted"} and accepted.attempt is None

    assert await store.reserve("o-2", "print", "mine") == Reserved(retaken=False)
    await store.release(transition("o-2", "unconfirmed", 0), "not-mine")
    assert (await store.get("o-2")).state == "pending"  # type: ignore[union-attr]
    await store.release(transition("o-2", "unconfirmed", 0), "mine")
    assert (await store.get("o-2")).state == "unconfirmed"  # type: ignore[union-attr]
    assert isinstance(await store.reserve("o-2", "another order", "t"), Taken)
    assert await store.reserve("o-2", "print", "retry") == Reserved(retaken=True)  # it may be stored: check it

    redis = Redis.from_url(str(settings.status_url))
    try:
        assert 0 < await redis.ttl(f"orderlane:{settings.queue}:order:o-1") <= settings.status_ttl
        await redis.hset(f"orderlane:{settings.queue}:order:o-2", "held_until", 0)  # its request died long ago
    finally:
        await redis.aclose()
    assert await store.reserve("o-2", "print", "after the hold") == Reserved(retaken=True)


async def test_a_late_write_never_takes_a_status_backwards(store: StatusStore) -> None:
    assert await store.record(transition("o", "processing", 2)) is None
    assert await store.record(transition("o", "retrying", 1)) == "processing"  # late: ignored
    status = await store.get("o")
    assert status is not None and (status.state, status.attempt) == ("processing", 2)
    await store.record(transition("o", "processed", 2))
    assert await store.record(transition("o", "processing", 1)) == "processed"
    assert (await store.get("o")).state == "processed"  # type: ignore[union-attr]
    await store.replay(transition("o", "replayed", 0))
    assert (await store.get("o")).state == "processed"  # type: ignore[union-attr]  # not dead: not replayed
    await store.record(transition("o", "dead_lettered", 3))
    await store.replay(transition("o", "replayed", 0))
    assert (await store.get("o")).state == "replayed"  # type: ignore[union-attr]
    await store.record(transition("o", "processing", 1))
    assert (await store.get("o")).state == "processing"  # type: ignore[union-attr]


async def test_a_call_the_store_cannot_take_is_answered_not_stranded(store: StatusStore) -> None:
    unencodable = Transition("o", "retrying", 1, 1.0, {"last_error": "a lone surrogate: \udcff"})
    answers: list[bool] = []
    store.record_then(transition("p", "processed", 1), then=answers.append)  # in the same call
    with pytest.raises(StatusUnavailable):
        await asyncio.wait_for(store.record(unencodable), 5)
    await store.settled()
    assert answers == [False], "answered as not written, so its ack is not stranded"
    assert await store.record(transition("p", "processed", 1)) is None, "the store goes on"


def test_an_error_text_is_valid_utf8_whatever_it_held() -> None:
    described = describe_error(RuntimeError("file \udcff.txt"))
    assert described.startswith("RuntimeError: file ") and described.encode()


async def test_operations_of_one_turn_travel_in_one_call(settings: Settings) -> None:
    registry = CollectorRegistry()
    async with open_status_store(settings, registry) as store:
        assert store is not None
        await asyncio.gather(*(store.record(transition(f"o-{n}", "processing", 1)) for n in range(200)))
        assert all(await asyncio.gather(*(store.get(f"o-{n}") for n in range(200))))
    assert registry.get_sample_value("orderlane_status_store_seconds_count") == 2


# --- intake and GET /orders/{id} ----------------------------------------------------------------------------------


async def test_a_repost_is_answered_from_the_status_and_publishes_nothing(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    first = await client.post("/orders", json=ORDER)
    assert first.status_code == 202
    assert first.headers["location"] == "/orders/A-1"
    status = await client.get(first.headers["location"])
    assert status.status_code == 200
    body = status.json()
    assert (body["order_id"], body["state"], body["priority"], body["queue"]) == ("A-1", "accepted", 3, settings.queue)
    assert set(body["at"]) == {"accepted"}

    again = await client.post("/orders", json={**ORDER, "user_type": None})  # the same order, spelled otherwise
    assert again.status_code == 200
    assert again.json()["state"] == "accepted"
    assert again.headers["content-location"] == "/orders/A-1"

    clash = await client.post("/orders", json={**ORDER, "items": ["lamp"]})
    assert clash.status_code == 409
    assert clash.json()["details"][0]["type"] == "order_id_conflict"

    assert await queue_depth(settings.queue) == 1
    assert await metric(client, 'orderlane_orders_deduplicated_total{outcome="known"}') == 1
    assert await metric(client, 'orderlane_orders_deduplicated_total{outcome="conflict"}') == 1


async def test_status_of_unknown_and_malformed_ids(client: httpx.AsyncClient) -> None:
    unknown = await client.get("/orders/never-posted")
    assert unknown.status_code == 404
    assert unknown.json()["details"][0]["type"] == "unknown_order"
    for bad in ("has%20space", "x" * 65, "semi%3Bcolon"):
        response = await client.get(f"/orders/{bad}")
        assert response.status_code == 422, bad


async def test_without_a_status_store_every_post_publishes(settings: Settings) -> None:
    off = settings.model_copy(update={"status_url": None})
    async with app_client(create_app(off)) as client:
        first = await client.post("/orders", json=ORDER)
        second = await client.post("/orders", json=ORDER)
        assert (first.status_code, second.status_code) == (202, 202)
        assert "location" not in first.headers
        disabled = await client.get("/orders/A-1")
        assert disabled.status_code == 404
        assert disabled.json()["details"][0]["type"] == "status_disabled"
        assert (await client.get("/readyz")).json()["status_store"] == "off"
    assert await queue_depth(settings.queue) == 2


async def test_orders_posted_twice_at_once_are_handled_once(
    client: httpx.AsyncClient, broker: Broker, store: StatusStore, settings: Settings
) -> None:
    handled: Counter[str] = Counter()

    async def handler(order: Order) -> None:
        handled[order.order_id] += 1

    orders = [{**ORDER, "order_id": f"twice-{n}"} for n in range(100)]
    responses = await asyncio.gather(*(client.post("/orders", json=order) for order in orders for _ in range(2)))
    codes = Counter(response.status_code for response in responses)
    assert codes == {202: 100, 200: 100}, codes
    assert await queue_depth(settings.queue) == 100
    async with consuming(broker, handler, settings, store):
        await wait_until(lambda: sum(handled.values()) >= 100, what="every order handled")
        await wait_until(lambda: depth_is(settings.queue, 0), what="the queue drained")
    assert handled == dict.fromkeys((order["order_id"] for order in orders), 1)
    final = await asyncio.gather(*(client.get(f"/orders/{order['order_id']}") for order in orders))
    assert {response.json()["state"] for response in final} == {"processed"}


async def test_a_retry_after_a_503_publishes_once(client: httpx.AsyncClient, settings: Settings) -> None:
    await delete_queues(settings.queue)  # unroutable: the broker returns the mandatory message, the API says 503
    failed = await client.post("/orders", json=ORDER)
    assert failed.status_code == 503
    assert (await client.get("/orders/A-1")).json()["state"] == "unconfirmed"
    async with open_broker(settings):  # declares the queue again
        pass
    retried = await client.post("/orders", json=ORDER)
    assert retried.status_code == 202
    assert (await client.post("/orders", json=ORDER)).status_code == 200
    [message] = await drain(settings.queue)
    assert message.headers[CHECK_PROCESSED_HEADER] is True, "a copy may have been stored: the consumer checks"


async def test_a_reservation_left_by_a_dead_api_blocks_only_until_it_expires(
    client: httpx.AsyncClient, store: StatusStore, settings: Settings
) -> None:
    order = Order.model_validate(ORDER)
    assert await store.reserve("A-1", fingerprint(encode_order(order)), "token-of-a-dead-process") == Reserved(False)
    busy = await client.post("/orders", json=ORDER)
    assert busy.status_code == 503
    assert busy.json()["details"][0]["type"] == "order_in_progress"
    assert busy.headers["retry-after"] == "1"
    redis = Redis.from_url(str(settings.status_url))
    try:
        await redis.hset(f"orderlane:{settings.queue}:order:A-1", "held_until", 0)  # as if its hold had run out
    finally:
        await redis.aclose()
    assert (await client.post("/orders", json=ORDER)).status_code == 202
    [message] = await drain(settings.queue)
    assert message.headers[CHECK_PROCESSED_HEADER] is True


# --- the consumer's transitions -----------------------------------------------------------------------------------


async def test_a_delivery_of_a_processed_order_is_acked_without_the_handler(
    broker: Broker, store: StatusStore, settings: Settings
) -> None:
    handled: list[str] = []

    async def handler(order: Order) -> None:
        handled.append(order.order_id)

    await store.record(transition("done-before", "processed", 1))
    await store.record(transition("unmarked", "processed", 1))
    marked = order_message("done-before", headers={CHECK_PROCESSED_HEADER: True})
    await publish_raw(settings.queue, marked, order_message("new"), order_message("unmarked"))
    async with consuming(broker, handler, settings, store) as consumer:
        await wait_until(lambda: handled == ["new", "unmarked"], what="the unmarked orders handled")
        await wait_until(lambda: consumer.metrics.already_processed._value.get() == 1, what="the skip counted")
    assert await queue_depth(settings.queue) == 0
    # A first delivery without the mark is not looked up (nothing says a copy exists): the handler runs.
    assert handled == ["new", "unmarked"]


async def test_the_consumer_records_every_transition(broker: Broker, store: StatusStore, settings: Settings) -> None:
    runs: Counter[str] = Counter()

    slow_may_finish = asyncio.Event()

    async def handler(order: Order) -> None:
        runs[order.order_id] += 1
        if order.order_id == "slow":
            await slow_may_finish.wait()
        if order.order_id == "flaky" and current_delivery().attempt == 1:
            raise RuntimeError("first try fails")
        if order.order_id == "doomed" and runs["doomed"] == 1:
            raise PermanentFailure("no such item")

    await publish_raw(settings.queue, order_message("slow"), order_message("flaky"), order_message("doomed"))
    async with consuming(broker, handler, settings, store):
        await wait_until(lambda: _state(store, "slow", "processing"), what="a running handler shows processing")
        slow_may_finish.set()
        await wait_until(lambda: _state(store, "flaky", "processed"), what="flaky processed on its retry")
        await wait_until(lambda: _state(store, "doomed", "dead_lettered"), what="doomed dead-lettered")
        flaky = await store.get("flaky")
        assert flaky is not None and flaky.attempt == 2 and set(flaky.at) >= {"processing", "retrying", "processed"}
        assert flaky.last_error == "RuntimeError: first try fails"
        assert list(flaky.at.values()) == sorted(flaky.at.values()), "in the order they happened"
        doomed = await store.get("doomed")
        assert doomed is not None and doomed.last_error == "PermanentFailure: no such item"

        assert await replay_dead_letters(broker, settings, 10, store) == ["doomed"]
        await wait_until(lambda: _state(store, "doomed", "processed"), what="doomed processed after its replay")
    doomed = await store.get("doomed")
    assert doomed is not None and "replayed" in doomed.at and doomed.attempt == 1


async def _state(store: StatusStore, order_id: str, state: str) -> bool:
    status = await store.get(order_id)
    return status is not None and status.state == state
