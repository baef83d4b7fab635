"""The Python clients (broker/client.py) against the real RabbitMQ and Redis: what they publish is what the API
publishes, intake is as idempotent as `POST /orders`, the sync client works from many threads, and a client used
outside its block refuses."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Annotated, Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage
from prometheus_client import CollectorRegistry
from pydantic import AmqpDsn, Field, RedisDsn, ValidationError

from api.app import create_app
from broker import (
    AsyncOrderClient,
    BrokerUnavailable,
    ClientClosed,
    ConfigurationError,
    Order,
    OrderBase,
    OrderClient,
    OrderIdConflict,
    OrderInProgress,
    OrderStatus,
    Receipt,
    Settings,
    StatusUnavailable,
)
from broker.headers import PRIORITY_HEADER, PUBLISHED_AT_HEADER
from broker.settings import LaneConfig
from tests.amqp import delete_topology, drain, queue_depth
from tests.http import app_client
from tests.processes import free_port

ORDER: dict[str, Any] = {"order_id": "C-1", "priority": 3, "items": ["book"], "user_type": "regular"}


class Model(OrderBase):
    """A shop's own order, named by ORDERLANE_ORDER_MODEL in the custom-model test."""

    sku: Annotated[str, Field(min_length=1)]
    quantity: Annotated[int, Field(gt=0)]
    unit_price: Decimal = Decimal("1.00")


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncOrderClient]:
    async with AsyncOrderClient(settings) as opened:
        yield opened


@pytest.fixture
async def laned(settings: Settings) -> AsyncIterator[Settings]:
    """The test's settings with two lanes, whose queues are deleted afterwards."""
    lanes = tuple(LaneConfig.parse(text) for text in ("high:0-2", "default:3-9"))
    with_lanes = settings.model_copy(update={"lanes": lanes})
    yield with_lanes
    await delete_topology(with_lanes)


def on_the_wire(message: AbstractIncomingMessage) -> dict[str, Any]:
    """What a message carries, but for what differs between two orders: their order_id and publishing time."""
    assert message.headers[PUBLISHED_AT_HEADER]
    return {
        "body": {**Order.model_validate_json(message.body).model_dump(), "order_id": None},
        "content_type": message.content_type,
        "delivery_mode": message.delivery_mode,
        "priority": message.priority,
        "headers": {name: value for name, value in message.headers.items() if name != PUBLISHED_AT_HEADER},
        "has_timestamp": message.timestamp is not None,
    }


async def test_a_submitted_order_is_in_its_lanes_queue_as_the_api_would_publish_it(laned: Settings) -> None:
    order = {"order_id": "C-vip", "priority": 6, "items": ["tea", "cup"], "user_type": "vip"}
    async with AsyncOrderClient(laned) as client:
        receipt = await client.submit(order)
    assert isinstance(receipt, Receipt)
    assert (receipt.order_id, receipt.queue, receipt.priority.effective) == ("C-vip", f"{laned.queue}.high", 0)
    async with app_client(create_app(laned)) as http:
        assert (await http.post("/orders", json={**order, "order_id": "H-vip"})).status_code == 202

    submitted, posted = await drain(receipt.queue)
    assert (submitted.message_id, posted.message_id) == ("C-vip", "H-vip")
    assert submitted.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert submitted.priority == laned.max_priority and submitted.headers[PRIORITY_HEADER] == 0
    assert on_the_wire(submitted) == on_the_wire(posted)
    assert await queue_depth(laned.queue) == 0


async def test_the_same_order_again_is_its_status_and_another_body_a_conflict(settings: Settings) -> None:
    registry = CollectorRegistry()
    async with AsyncOrderClient(settings, registry=registry) as client:
        assert isinstance(await client.submit(ORDER), Receipt)
        status = await client.status("C-1")
        assert status is not None
        assert (status.state, status.priority, status.queue) == ("accepted", 3, settings.queue)

        again = await client.submit(Order.model_validate({**ORDER, "user_type": None}))  # the same, spelled otherwise
        assert isinstance(again, OrderStatus) and (again.order_id, again.state) == ("C-1", "accepted")
        with pytest.raises(OrderIdConflict) as conflict:
            await client.submit({**ORDER, "items": ["lamp"]})
        assert conflict.value.order_id == "C-1"
        assert await client.status("never-submitted") is None
        with pytest.raises(ValidationError):
            await client.status("not an order id")
    assert await queue_depth(settings.queue) == 1
    for outcome in ("known", "conflict"):
        assert registry.get_sample_value("orderlane_orders_deduplicated_total", {"outcome": outcome}) == 1


async def test_an_order_submitted_twice_at_once_is_published_once(client: AsyncOrderClient, settings: Settings) -> None:
    orders = [{**ORDER, "order_id": f"twice-{n}"} for n in range(100)]
    results = await asyncio.gather(*(client.submit(order) for order in orders for _ in range(2)))
    assert Counter(type(result) for result in results) == {Receipt: 100, OrderStatus: 100}
    assert await queue_depth(settings.queue) == 100


async def test_two_clients_at_once_publish_an_order_once(settings: Settings) -> None:
    """Two clients are two intakes, as two processes would be: the one that does not publish gets the order's
    status, or OrderInProgress while the other's publish is not confirmed yet."""
    orders = [{**ORDER, "order_id": f"both-{n}"} for n in range(50)]
    async with AsyncOrderClient(settings) as one, AsyncOrderClient(settings) as other:
        results = await asyncio.gather(
            *(client.submit(order) for order in orders for client in (one, other)), return_exceptions=True
        )
    for order, pair in zip(orders, zip(results[::2], results[1::2], strict=True), strict=True):
        assert sum(isinstance(result, Receipt) for result in pair) == 1, (order, pair)
        assert all(isinstance(result, Receipt | OrderStatus | OrderInProgress) for result in pair), pair
    assert await queue_depth(settings.queue) == 50


async def test_closing_waits_for_the_submits_in_flight(settings: Settings) -> None:
    async with AsyncOrderClient(settings) as client:
        submits = [asyncio.create_task(client.submit({**ORDER, "order_id": f"late-{n}"})) for n in range(20)]
        await asyncio.sleep(0)  # one turn of the loop: each submit has started, so it is in flight
    results = await asyncio.gather(*submits)
    assert all(isinstance(result, Receipt) for result in results)
    assert await queue_depth(settings.queue) == 20


async def test_without_a_status_store_every_submit_publishes_and_status_is_refused(settings: Settings) -> None:
    async with AsyncOrderClient(settings.model_copy(update={"status_url": None})) as client:
        assert isinstance(await client.submit(ORDER), Receipt)
        assert isinstance(await client.submit(ORDER), Receipt)
        with pytest.raises(ConfigurationError, match="ORDERLANE_STATUS_URL"):
            await client.status("C-1")
    assert await queue_depth(settings.queue) == 2


async def test_a_status_store_that_does_not_answer(settings: Settings) -> None:
    away = settings.model_copy(update={"status_url": RedisDsn(f"redis://127.0.0.1:{free_port()}/0")})
    async with AsyncOrderClient(away) as client:
        with pytest.raises(StatusUnavailable):
            await client.status("C-1")
        assert isinstance(await client.submit(ORDER), Receipt), "published without the duplicate check"
    async with AsyncOrderClient(away.model_copy(update={"status_required": True})) as client:
        with pytest.raises(StatusUnavailable):
            await client.submit({**ORDER, "order_id": "C-2"})
    assert await queue_depth(settings.queue) == 1


async def test_a_mapping_is_validated_with_the_configured_order_model(settings: Settings) -> None:
    custom = Settings(
        amqp_url=settings.amqp_url, queue=settings.queue, status_ttl=600, order_model="tests.test_client:Model"
    )
    async with AsyncOrderClient(custom) as client:
        assert isinstance(await client.submit({"order_id": "M-1", "sku": "tea", "quantity": 2}), Receipt)
        with pytest.raises(ValidationError):
            await client.submit({"order_id": "M-2", "items": ["tea"]})  # the default model's shape
        with pytest.raises(TypeError, match=r"tests\.test_client\.Model"):
            await client.submit(Order(order_id="M-3", items=["tea"]))
        assert isinstance(await client.submit(Model(order_id="M-4", sku="cup", quantity=1)), Receipt)
        priced = {"order_id": "M-5", "sku": "pot", "quantity": 1, "unit_price": "12.50"}  # as JSON spells a Decimal
        assert isinstance(await client.submit(priced), Receipt), "what POST /orders takes, submit() takes"
    first, second, third = await drain(settings.queue)
    assert Model.model_validate_json(first.body) == Model(order_id="M-1", sku="tea", quantity=2)
    assert Model.model_validate_json(second.body).order_id == "M-4"
    assert Model.model_validate_json(third.body).unit_price == Decimal("12.50")


async def test_an_async_client_refuses_use_outside_its_block(settings: Settings) -> None:
    client = AsyncOrderClient(settings)
    with pytest.raises(ClientClosed, match="async with"):
        await client.submit(ORDER)
    async with client:
        pass
    with pytest.raises(ClientClosed):
        await client.submit(ORDER)
    with pytest.raises(ClientClosed):
        await client.status("C-1")
    with pytest.raises(ClientClosed, match="opens once"):
        async with client:
            pass
    assert await queue_depth(settings.queue) == 0


async def test_a_client_that_cannot_connect_raises_and_leaves_no_thread(settings: Settings) -> None:
    nowhere = settings.model_copy(
        update={"amqp_url": AmqpDsn(f"amqp://guest:guest@127.0.0.1:{free_port()}/"), "startup_timeout": 0}
    )
    with pytest.raises(BrokerUnavailable):
        async with AsyncOrderClient(nowhere):
            pass

    def open_sync() -> None:
        with pytest.raises(BrokerUnavailable):
            OrderClient(nowhere).open()

    await asyncio.to_thread(open_sync)
    assert not client_threads()


def client_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name == "orderlane-client"}


async def test_the_sync_client_from_several_threads_at_once(settings: Settings) -> None:
    orders = [{**ORDER, "order_id": f"thread-{n}"} for n in range(40)]

    def from_threads() -> tuple[list[Receipt | OrderStatus], list[OrderStatus | None], set[threading.Thread]]:
        with OrderClient(settings) as client, ThreadPoolExecutor(8) as pool:
            results = list(pool.map(client.submit, [order for order in orders for _ in range(2)]))
            statuses = list(pool.map(client.status, [order["order_id"] for order in orders]))
            return results, statuses, client_threads()

    results, statuses, threads = await asyncio.to_thread(from_threads)
    assert Counter(type(result) for result in results) == {Receipt: 40, OrderStatus: 40}
    assert [status.state if status else None for status in statuses] == ["accepted"] * 40
    assert await queue_depth(settings.queue) == 40
    assert threads and not any(thread.is_alive() for thread in threads), "closing stops the client's thread"


async def test_a_sync_client_refuses_use_outside_its_block(settings: Settings) -> None:
    def misuse() -> None:
        client = OrderClient(settings)
        with pytest.raises(ClientClosed, match="inside `with`"):
            client.submit(ORDER)
        with pytest.raises(ClientClosed, match="inside `with`"):
            client.status("C-1")
        with client:
            pass
        with pytest.raises(ClientClosed, match="inside `with`"):
            client.submit(ORDER)
        with pytest.raises(ClientClosed, match="opens once"), client:
            pass
        kept = OrderClient(settings).open()  # as a web worker keeps one
        assert isinstance(kept.submit(ORDER), Receipt)
        kept.close()
        kept.close()
        with pytest.raises(ClientClosed):
            kept.status("C-1")

    await asyncio.to_thread(misuse)
    assert not client_threads(), "no client left a thread: not the closed ones, not the refused one"
    assert await queue_depth(settings.queue) == 1
