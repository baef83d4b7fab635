"""Operating orderlane: metrics that move, a true backlog view, API keys, the OpenAPI document, the queue type."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aio_pika
import httpx
from openapi_spec_validator import validate
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from broker.connection import Broker
from broker.messages import Order
from broker.settings import Settings
from broker.topology import build_topology
from consumers.delivery import current_delivery
from tests.amqp import delete_queues, depth_is, publish_raw, queue_depth, wait_until
from tests.consuming import consuming, order_message
from tests.fakes import RecordingPublisher
from tests.faults import rabbitmqctl, require_rabbitmqctl
from tests.http import app_client
from tests.processes import environment, free_port, read_until, run, start

ORDER: dict[str, Any] = {"order_id": "m-1", "priority": 4, "items": ["x"]}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text as {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scrape: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_api_metrics_move_when_orders_flow(settings: Settings) -> None:
    async with app_client(create_app(settings)) as client:
        before = samples((await client.get("/metrics")).text)
        for order in (ORDER, {**ORDER, "order_id": "m-2"}, {**ORDER, "order_id": "m-3", "user_type": "vip"}):
            assert (await client.post("/orders", json=order)).status_code == 202
        assert (await client.post("/orders", json={"order_id": "bad"})).status_code == 422
        after = samples((await client.get("/metrics")).text)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("orderlane_http_requests_total", route="/orders", method="POST", status="202") == 3
    assert delta("orderlane_http_requests_total", route="/orders", method="POST", status="422") == 1
    assert delta("orderlane_orders_accepted_total", priority="4") == 2
    assert delta("orderlane_orders_accepted_total", priority="0") == 1
    assert delta("orderlane_publish_confirm_seconds_count") == 3


async def test_consumer_metrics_count_outcomes_and_waits_per_priority(settings: Settings, broker: Broker) -> None:
    settings = settings.model_copy(update={"max_attempts": 2})
    async with app_client(create_app(settings)) as client:
        for order in ({**ORDER, "order_id": "ok-1"}, {**ORDER, "order_id": "fails", "user_type": "vip"}):
            assert (await client.post("/orders", json=order)).status_code == 202
    await publish_raw(settings.queue, aio_pika.Message(b"garbage", content_type="application/json"))

    async def handler(order: Order) -> None:
        if order.order_id == "fails":
            raise RuntimeError(f"attempt {current_delivery().attempt}")

    async with consuming(broker, handler, settings) as consumer:
        await wait_until(lambda: depth_is(settings.dead_letter_queue, 2), what="garbage and the failing order")
        metrics = consumer.metrics
    scrape = samples(generate_latest(metrics.registry).decode())
    assert value(scrape, "orderlane_orders_processed_total", priority="4") == 1
    assert value(scrape, "orderlane_orders_failed_total", priority="0") == 2
    assert value(scrape, "orderlane_orders_retried_total", priority="0") == 1
    assert value(scrape, "orderlane_orders_dead_lettered_total", priority="0", reason="exhausted") == 1
    assert value(scrape, "orderlane_orders_dead_lettered_total", priority="unknown", reason="invalid") == 1
    assert value(scrape, "orderlane_order_wait_seconds_count", priority="4") == 1
    assert value(scrape, "orderlane_order_wait_seconds_count", priority="0") == 2
    assert value(scrape, "orderlane_handler_seconds_count") == 3
    assert value(scrape, "orderlane_order_held_seconds_count", priority="4") == 1
    assert value(scrape, "orderlane_order_held_seconds_count", priority="0") == 2
    assert value(scrape, "orderlane_orders_in_flight") == 0
    assert value(scrape, "orderlane_orders_held") == 0
    assert value(scrape, "orderlane_consumer_concurrency") == 1
    assert value(scrape, "orderlane_consumer_prefetch", queue=settings.queue) == 1


async def test_consumer_serves_metrics_with_queue_depths(settings: Settings, broker: Broker) -> None:
    await publish_raw(settings.dead_letter_queue, *(order_message(f"d-{n}") for n in range(3)))
    port = free_port()
    env = environment(settings, ORDERLANE_QUEUE_POLL_SECONDS="0.2")
    consumer = await start("consumers", "--metrics-port", str(port), env=env)
    try:
        await read_until(consumer, "consumer ready", 1, [])
        async with httpx.AsyncClient() as client, asyncio.timeout(30):
            while True:
                scrape = samples((await client.get(f"http://127.0.0.1:{port}/metrics")).text)
                depth = value(scrape, "orderlane_queue_messages", queue=settings.dead_letter_queue)
                consumers = value(scrape, "orderlane_queue_consumers", queue=settings.queue)
                if (depth, consumers) == (3, 1):
                    break
                await asyncio.sleep(0.1)
    finally:
        consumer.terminate()
        await consumer.wait()


async def test_backlog_view_shows_true_depths(settings: Settings, broker: Broker) -> None:
    await publish_raw(settings.queue, *(order_message(f"w-{n}") for n in range(5)))
    await publish_raw(settings.dead_letter_queue, *(order_message(f"d-{n}") for n in range(2)))
    async with app_client(create_app(settings)) as client:
        backlog = (await client.get("/queues")).json()["queues"]
    depths = {entry["queue"]: entry["messages"] for entry in backlog}
    assert depths[settings.queue] == 5
    assert depths[settings.dead_letter_queue] == 2
    assert depths[f"{settings.queue}.retry.1"] == 0
    assert [entry["queue"] for entry in backlog[:2]] == [f"{settings.queue}.high", f"{settings.queue}.high.retry.1"]

    code, table = await run("consumers", "status", env=environment(settings), stdout=True)
    assert code == 0
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[1:]}
    assert rows[settings.queue] == ["5", "0"]
    assert rows[settings.dead_letter_queue] == ["2", "0"]


async def test_api_keys_guard_orders_and_leave_probes_open(settings: Settings) -> None:
    guarded = Settings.model_validate({**settings.model_dump(), "api_keys": "k-one,k-two"})
    async with app_client(create_app(guarded)) as client:
        missing = await client.post("/orders", json=ORDER)
        wrong = await client.post("/orders", json=ORDER, headers={"authorization": "Bearer k-three"})
        basic = await client.post("/orders", json=ORDER, headers={"authorization": "Basic k-one"})
        right = await client.post("/orders", json=ORDER, headers={"authorization": "Bearer k-two"})
        probes = [(await client.get(path)).status_code for path in ("/healthz", "/readyz", "/metrics", "/queues")]
        schema = await client.get("/openapi.json")
    assert [missing.status_code, wrong.status_code, basic.status_code] == [401, 401, 401]
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["details"][0]["type"] == "unauthorized"
    assert right.status_code == 202
    assert probes == [200, 200, 200, 200]
    assert schema.status_code == 200


async def test_a_key_over_its_rate_gets_429_and_the_other_keys_are_served(settings: Settings) -> None:
    limited = Settings.model_validate(
        {**settings.model_dump(), "api_keys": "k-one,k-two", "rate_limit_per_key": 0.01, "rate_limit_burst": 2}
    )
    one, two = ({"authorization": f"Bearer k-{name}"} for name in ("one", "two"))
    async with app_client(create_app(limited)) as client:
        first = [(await client.post("/orders", json={**ORDER, "order_id": f"r-{n}"}, headers=one)) for n in range(3)]
        other = await client.post("/orders", json={**ORDER, "order_id": "r-other"}, headers=two)
        probe = await client.get("/healthz", headers=one)
        metrics = (await client.get("/metrics")).text
    assert [response.status_code for response in first] == [202, 202, 429]
    refused = first[2]
    assert refused.json()["details"][0]["type"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 90  # the next token comes after 1 / 0.01 s
    assert other.status_code == 202
    assert probe.status_code == 200  # open paths are not counted against a key
    assert 'orderlane_http_rate_limited_total{key="1"} 1.0' in metrics
    assert await queue_depth(settings.queue) == 3


async def test_open_paths_are_configurable(settings: Settings) -> None:
    closed = Settings.model_validate({**settings.model_dump(), "api_keys": "k", "open_paths": "/healthz"})
    async with app_client(create_app(closed)) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers={"authorization": "Bearer k"})).status_code == 200


async def test_openapi_document_validates_and_describes_the_order(settings: Settings) -> None:
    async with app_client(create_app(settings)) as client:
        document = (await client.get("/openapi.json")).json()
    validate(document)
    order_schema = document["components"]["schemas"]["Order"]
    assert order_schema["properties"].keys() == {"order_id", "priority", "items", "user_type", "deadline"}
    assert order_schema["required"] == ["order_id", "items"]
    assert order_schema["additionalProperties"] is False
    assert order_schema["properties"]["priority"]["maximum"] == 9
    post = document["paths"]["/orders"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Order"}
    assert set(post["responses"]) == {"200", "202", "400", "401", "408", "409", "413", "415", "422", "429", "503"}
    assert "Location" in post["responses"]["202"]["headers"]
    status = document["paths"]["/orders/{order_id}"]["get"]
    assert set(status["responses"]) == {"200", "401", "404", "422", "429", "503"}
    assert status["parameters"][0]["schema"]["pattern"] == order_schema["properties"]["order_id"]["pattern"]
    assert {"order_id", "state", "at"} <= document["components"]["schemas"]["OrderStatus"]["properties"].keys()


def test_queue_type_arguments_classic_and_quorum() -> None:
    classic = build_topology(Settings(queue="q", queue_type="classic", max_priority=7))
    assert classic.lanes[0].work.arguments["x-max-priority"] == 7
    assert "x-queue-type" not in classic.lanes[0].work.arguments
    quorum = build_topology(Settings(queue="q", queue_type="quorum"))
    assert quorum.lanes[0].work.arguments["x-queue-type"] == "quorum"
    assert "x-max-priority" not in quorum.lanes[0].work.arguments
    assert {spec.arguments["x-queue-type"] for spec in (quorum.dead_letter, *quorum.lanes[0].retries)} == {"quorum"}


async def test_json_logs_carry_message_fields_and_never_the_password(settings: Settings, broker: Broker) -> None:
    ctl = require_rabbitmqctl()
    user, password = f"ol-{settings.queue}", "Pa55-never-logged-x7"
    await rabbitmqctl(ctl, "add_user", user, password)
    try:
        await rabbitmqctl(ctl, "set_permissions", "-p", "/", user, ".*", ".*", ".*")
        own = settings.model_copy(update={"amqp_url": f"amqp://{user}:{password}@127.0.0.1:5672/"})
        await publish_raw(settings.queue, order_message("json-1", headers={"x-orderlane-priority": 3}))
        consumer = await start("consumers", env=environment(own, ORDERLANE_LOG_FORMAT="json"))
        lines: list[str] = []
        try:
            await read_until(consumer, "json-1", 1, lines)
            await rabbitmqctl(ctl, "close_all_connections", "test: force a reconnect")
            await read_until(consumer, "reconnected to the broker", 1, lines)
            await publish_raw(settings.queue, order_message("json-2"))
            await read_until(consumer, "json-2", 1, lines)
        finally:
            consumer.terminate()
            assert consumer.stderr is not None
            lines += (await consumer.stderr.read()).decode().splitlines(keepends=True)
            await consumer.wait()
    finally:
        await rabbitmqctl(ctl, "delete_user", user)
    entries = [json.loads(line) for line in lines]
    processed = [entry for entry in entries if entry["message"].startswith("order processed")]
    assert [(e["order_id"], e["priority"], e["attempt"]) for e in processed] == [("json-1", 3, 1), ("json-2", 5, 1)]
    assert {"time", "level", "logger"} <= processed[0].keys()
    assert any(entry["message"].startswith("lost the broker") for entry in entries)
    assert password not in "".join(lines)


async def test_backlog_view_marks_a_missing_queue(settings: Settings, broker: Broker) -> None:
    async with app_client(create_app(settings, publisher=RecordingPublisher(settings))) as client:
        assert (await client.get("/queues")).status_code == 503  # an injected publisher has no broker to ask
    async with app_client(create_app(settings)) as client:
        await delete_queues(settings.dead_letter_queue)  # after the API declared it
        backlog = {entry["queue"]: entry for entry in (await client.get("/queues")).json()["queues"]}
    missing = {"queue": settings.dead_letter_queue, "messages": None, "consumers": None}
    assert backlog[settings.dead_letter_queue] == missing
    assert backlog[settings.queue]["messages"] == 0
