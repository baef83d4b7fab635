"""The status store under faults: a consumer killed between its handler and its ack, and a Redis that stops
answering mid-stream (a redis-server of the test's own, on a free port: the machine's Redis is left alone)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from functools import partial
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry
from pydantic import RedisDsn

from api.app import create_app
from broker.connection import Broker, open_broker
from broker.errors import PermanentFailure
from broker.headers import CHECK_PROCESSED_HEADER
from broker.messages import Order
from broker.settings import Settings
from broker.status_store import open_status_store
from consumers.delivery import Delivery
from consumers.dlq import replay_dead_letters
from consumers.metrics import ConsumerMetrics
from consumers.runner import Consumer
from consumers.status import Attempt, StoreRecorder
from tests.amqp import delete_queues, depth_is, drain, publish_raw, queue_depth, wait_until
from tests.consuming import consuming, order_message
from tests.dying import DIE_AFTER
from tests.http import app_client
from tests.processes import environment, run, start
from tests.recording import RECORD_FILE, recorded
from tests.status import redis_server

ORDERS = 300


async def test_a_consumer_killed_after_its_handler_does_not_run_it_again(
    settings: Settings, broker: Broker, tmp_path: Path
) -> None:
    record_file = tmp_path / "processed.log"
    env = environment(settings, **{RECORD_FILE: str(record_file), DIE_AFTER: "k-1"})
    await publish_raw(settings.queue, order_message("k-1"))
    dying = await start("consumers", "--handler", "tests.dying:record_then_die", env=env)
    async with asyncio.timeout(60):
        await dying.wait()
    assert dying.returncode == -signal.SIGKILL
    assert recorded(record_file) == {"k-1": 1}
    assert await queue_depth(settings.queue) == 1, "killed before its ack: the broker still holds the order"

    consumer = await start("consumers", "--handler", "tests.recording:record", env=env)
    try:
        await wait_until(lambda: depth_is(settings.queue, 0), what="the redelivery acked")
    finally:
        consumer.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, log = await consumer.communicate()
    assert recorded(record_file) == {"k-1": 1}, "the handler ran again for an order already processed"
    assert "already processed" in log.decode()


async def test_redis_away_mid_stream_loses_no_order_and_no_status_lies(settings: Settings, broker: Broker) -> None:
    handled: Counter[str] = Counter()

    async def handler(order: Order) -> None:
        handled[order.order_id] += 1
        await asyncio.sleep(0.002)

    async with redis_server() as redis:
        local = settings.model_copy(update={"status_url": RedisDsn(redis.url), "status_timeout": 0.2})
        registry = CollectorRegistry()
        async with app_client(create_app(local)) as client, open_status_store(local, registry) as store:
            consumer = Consumer(broker, handler, local, prefetch=16, concurrency=4, status=store)
            await consumer.start()

            async def handled_and_written(orders: set[str]) -> None:
                await wait_until(lambda: handled.keys() >= orders, what="every accepted order handled")
                await wait_until(lambda: depth_is(local.queue, 0), what="every order acked")
                held_back = "orderlane_status_writes_held_back"
                gauge = consumer.metrics.registry.get_sample_value
                await wait_until(lambda: gauge(held_back) == 0, what="held-back writes written")
                await wait_until(lambda: store_is_up(client), what="the API finds the store again")

            try:
                before = await post_orders(client, 0, ORDERS // 3)
                redis.pause()  # a partition: nothing answers, nothing is lost
                during = await post_orders(client, ORDERS // 3, 2 * ORDERS // 3)
                await wait_until(lambda: handled.keys() >= during, what="orders handled while Redis hangs")
                redis.resume()
                await handled_and_written(before | during)
                after_partition = await states(client, before | during)

                await redis.stop()  # and a restart: everything it held is gone
                await redis.start()
                after = await post_orders(client, 2 * ORDERS // 3, ORDERS)
                await handled_and_written(after)
                after_restart = await states(client, before | during | after)
            finally:
                await consumer.stop(grace_seconds=5)
    print(f"\nRedis paused during {len(during)} of {ORDERS} orders: {dict(Counter(after_partition.values()))}")
    print(f"then restarted empty: {dict(Counter(after_restart.values()))}")
    assert len(before | during | after) == ORDERS, "every order was accepted: intake does not need the store"
    assert set(after_partition.values()) == {"processed"}, "held-back writes bring every status up to date"
    assert {after_restart[order_id] for order_id in after} == {"processed"}
    assert set(after_restart.values()) <= {"processed", "unknown"}, "never an older state than the truth"
    assert registry.get_sample_value("orderlane_status_store_errors_total", {"operation": "transition"})


async def store_is_up(client: httpx.AsyncClient) -> bool:
    return bool((await client.get("/readyz")).json()["status_store"] == "up")


async def states(client: httpx.AsyncClient, order_ids: set[str]) -> dict[str, str]:
    found = await asyncio.gather(*(state_of(client, order_id) for order_id in order_ids))
    return dict(zip(order_ids, found, strict=True))


async def post_orders(client: httpx.AsyncClient, first: int, end: int) -> set[str]:
    accepted: set[str] = set()
    for n in range(first, end):
        order_id = f"r-{n:04d}"
        response = await client.post("/orders", json={"order_id": order_id, "items": ["a"]})
        assert response.status_code == 202, response.text
        accepted.add(order_id)
    return accepted


async def state_of(client: httpx.AsyncClient, order_id: str) -> str:
    response = await client.get(f"/orders/{order_id}")
    if response.status_code == 404:
        return "unknown"
    assert response.status_code == 200, response.text
    state: str = response.json()["state"]
    return state


async def test_intake_while_redis_is_away_accepts_or_refuses_as_configured(settings: Settings) -> None:
    async with redis_server() as redis:
        local = settings.model_copy(update={"status_url": RedisDsn(redis.url), "status_timeout": 0.2})
        await redis.stop()
        async with app_client(create_app(local)) as client:
            assert (await client.post("/orders", json={"order_id": "a-1", "items": ["a"]})).status_code == 202
            assert (await client.post("/orders", json={"order_id": "a-1", "items": ["a"]})).status_code == 202
            unknown = await client.get("/orders/a-1")
            assert unknown.status_code == 503
            assert unknown.json()["details"][0]["type"] == "status_unavailable"
            assert (await client.get("/readyz")).json()["status_store"] == "away"
            metrics = (await client.get("/metrics")).text
            assert "orderlane_orders_without_dedup_total 2.0" in metrics
            messages = await drain(local.queue)
            assert [message.headers.get(CHECK_PROCESSED_HEADER) for message in messages] == [True, True]
            await delete_queues(local.queue)  # and the broker refuses it too: still a 503, never a 500
            unroutable = await client.post("/orders", json={"order_id": "a-3", "items": ["a"]})
            assert unroutable.status_code == 503, unroutable.text
            assert unroutable.json()["details"][0]["type"] == "broker_unavailable"
        async with open_broker(local):  # the queue back
            pass
        required = local.model_copy(update={"status_required": True})
        async with app_client(create_app(required)) as client:
            refused = await client.post("/orders", json={"order_id": "a-2", "items": ["a"]})
            assert refused.status_code == 503
            assert refused.json()["details"][0]["type"] == "status_unavailable"
            assert "retry-after" in refused.headers
            assert (await client.get("/readyz")).status_code == 503
            tried = await store_calls(client)

            async def asked_again_and_still_away() -> bool:  # after the pause in which the store is not even tried
                status = (await client.get("/readyz")).status_code
                return await store_calls(client) > tried and status == 503

            await wait_until(asked_again_and_still_away, what="/readyz asks the store again, and it is still away")
            await redis.start()

            async def ready() -> bool:  # the store is tried again after a pause of a second
                return (await client.get("/readyz")).status_code == 200

            await wait_until(ready, what="ready again")
            assert (await client.post("/orders", json={"order_id": "a-2", "items": ["a"]})).status_code == 202
    assert await queue_depth(settings.queue) == 1


async def test_dlq_replay_records_replayed(settings: Settings, broker: Broker) -> None:
    env = environment(settings)
    async with open_status_store(settings, CollectorRegistry()) as store:
        assert store is not None
        failing = order_message("dead-1", headers={"x-orderlane-attempt": 1})
        await publish_raw(settings.dead_letter_queue, failing)
        code, _ = await run("consumers", "dlq", "replay", env=env)
        assert code == 0
        status = await store.get("dead-1")
        assert status is not None and status.state == "replayed" and status.queue == settings.queue


async def test_held_back_writes_are_bounded_and_written_when_redis_answers(settings: Settings) -> None:
    metrics = ConsumerMetrics()
    async with redis_server() as redis:
        local = settings.model_copy(update={"status_url": RedisDsn(redis.url), "status_timeout": 0.2})
        async with open_status_store(local, CollectorRegistry()) as store:
            assert store is not None
            recorder = StoreRecorder(store, metrics, max_held_back=3)
            await redis.stop()
            acked: list[int] = []
            for n in range(5):
                delivery = Delivery(order_id=f"h-{n}", priority=5, attempt=1, redelivered=False)
                recorder.processed(Attempt(delivery, local.queue, time.time()), then=partial(acked.append, n))
                await recorder.settled()
            assert acked == [0, 1, 2, 3, 4], "the store being away holds up no ack"
            assert metrics.registry.get_sample_value("orderlane_status_writes_held_back") == 3
            assert metrics.registry.get_sample_value("orderlane_status_writes_dropped_total") == 2
            await redis.start()
            held_back = metrics.registry.get_sample_value
            await wait_until(lambda: held_back("orderlane_status_writes_held_back") == 0, what="written back")
            found = {n: await store.get(f"h-{n}") for n in range(5)}
            await recorder.close()
    assert [n for n, status in found.items() if status is not None and status.state == "processed"] == [2, 3, 4]


async def test_a_replay_that_fails_again_ends_dead_lettered_not_replayed(settings: Settings, broker: Broker) -> None:
    async def always_fails(order: Order) -> None:
        raise PermanentFailure("still no such item")

    orders = [f"again-{n}" for n in range(20)]
    async with open_status_store(settings, CollectorRegistry()) as store:
        assert store is not None
        await publish_raw(settings.queue, *(order_message(order_id) for order_id in orders))
        async with consuming(broker, always_fails, settings, store):
            await wait_until(lambda: depth_is(settings.dead_letter_queue, 20), what="all dead-lettered")
            assert await replay_dead_letters(broker, settings, 20, store) == orders
            await wait_until(lambda: depth_is(settings.dead_letter_queue, 20), what="all dead-lettered again")
            statuses = await asyncio.gather(*(store.get(order_id) for order_id in orders))
    states = {status.state for status in statuses if status is not None}
    assert states == {"dead_lettered"}, "what a consumer recorded of the new round comes after the replay"
    assert all(status is not None and "replayed" in status.at for status in statuses)


async def store_calls(client: httpx.AsyncClient) -> float:
    """Calls the API made to the status store (a call not tried during the pause after a failure is not one)."""
    text = (await client.get("/metrics")).text
    name = "orderlane_status_store_seconds_count "
    return sum(float(line.removeprefix(name)) for line in text.splitlines() if line.startswith(name))
