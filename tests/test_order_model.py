"""ORDERLANE_ORDER_MODEL: a shop's own order, validated by the API, decoded by the consumer, and evolved while the
API and the consumers are deployed one after the other."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from typing import Annotated, Any

import aio_pika
import pytest
from pydantic import BaseModel, ConfigDict, Field

from api.app import create_app
from api.openapi import openapi_document
from broker.connection import Broker
from broker.headers import ERROR_TYPE_HEADER
from broker.messages import OrderBase, encode_order
from broker.publisher import OrderPublisher
from broker.settings import Settings
from tests.amqp import depth_is, drain, publish_raw, queue_depth, wait_until
from tests.consuming import consuming
from tests.fakes import RecordingPublisher
from tests.http import app_client
from tests.processes import environment, run


class LineItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sku: Annotated[str, Field(min_length=1)]
    quantity: Annotated[int, Field(gt=0)]
    unit_price: Decimal


class Parcel(OrderBase):
    """Version 1 of a shop's order: line items instead of item names."""

    items: Annotated[list[LineItem], Field(min_length=1)]


class ParcelWithGiftWrap(Parcel):
    """Version 2, the safe way: a new field with a default, so a message written by version 1 is still an order."""

    gift_wrap: bool = False


class ParcelWithRequiredNote(Parcel):
    """Version 2, the unsafe way: a new required field, which a message written by version 1 cannot have."""

    note: str


class OrderStatus(OrderBase):
    """A shop's order whose name is one of the API's own schemas."""

    items: list[str]


class NotAnOrder(BaseModel):
    order_id: str


PARCEL = {"order_id": "P-1", "priority": 4, "items": [{"sku": "lamp", "quantity": 2, "unit_price": "19.90"}]}


def model(name: str) -> str:
    return f"{__name__}:{name}"


def with_model(settings: Settings, name: str) -> Settings:
    return Settings.model_validate({**settings.model_dump(), "order_model": model(name)})


async def test_the_api_validates_with_the_model_and_publishes_an_instance_of_it() -> None:
    publisher = RecordingPublisher()
    app = create_app(Settings(order_model=model("Parcel"), status_url=None), publisher=publisher)
    async with app_client(app) as client:
        accepted = await client.post("/orders", json=PARCEL)
        refused = await client.post("/orders", json={**PARCEL, "items": [{"sku": "lamp", "quantity": 0}]})
        item_names = await client.post("/orders", json={**PARCEL, "order_id": "P-2", "items": ["lamp"]})
    assert accepted.status_code == 202
    [published] = publisher.published
    assert isinstance(published, Parcel)
    assert published.items == [LineItem(sku="lamp", quantity=2, unit_price=Decimal("19.90"))]
    assert refused.status_code == 422
    assert refused.json()["status"] == "error"
    locations = {tuple(error["loc"]) for error in refused.json()["details"]}
    assert locations == {("items", 0, "quantity"), ("items", 0, "unit_price")}
    assert item_names.status_code == 422, "the default model's item names are not line items"
    assert len(publisher.published) == 1


async def test_the_openapi_document_describes_the_model() -> None:
    app = create_app(Settings(order_model=model("Parcel"), status_url=None), publisher=RecordingPublisher())
    async with app_client(app) as client:
        document = (await client.get("/openapi.json")).json()
    body = document["paths"]["/orders"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/Parcel"}
    schemas = document["components"]["schemas"]
    assert schemas["Parcel"]["properties"]["items"]["items"] == {"$ref": "#/components/schemas/LineItem"}
    assert set(schemas["LineItem"]["required"]) == {"sku", "quantity", "unit_price"}


def references(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from [value] if key == "$ref" else references(value)
    elif isinstance(node, list):
        for value in node:
            yield from references(value)


def test_a_model_named_like_one_of_the_apis_schemas_leaves_no_reference_dangling() -> None:
    document = openapi_document("1", OrderStatus)
    schemas = document["components"]["schemas"]
    assert {ref.removeprefix("#/components/schemas/") for ref in references(document)} <= set(schemas)
    body = document["paths"]["/orders"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "order_id" in schemas[body["$ref"].rsplit("/", 1)[1]]["properties"]
    known = document["paths"]["/orders"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert "state" in schemas[known["$ref"].rsplit("/", 1)[1]]["properties"]


async def test_idempotency_compares_orders_of_the_model(settings: Settings, broker: Broker) -> None:
    parcel_settings = with_model(settings, "Parcel")
    app = create_app(parcel_settings, publisher=OrderPublisher(broker, parcel_settings))
    async with app_client(app) as client:
        first = await client.post("/orders", json=PARCEL)
        again = await client.post("/orders", json=PARCEL)
        other_quantity = [{"sku": "lamp", "quantity": 3, "unit_price": "19.90"}]
        conflict = await client.post("/orders", json={**PARCEL, "items": other_quantity})
    assert [first.status_code, again.status_code, conflict.status_code] == [202, 200, 409]
    assert conflict.json()["details"][0]["type"] == "order_id_conflict"
    assert await queue_depth(settings.queue) == 1


async def test_the_handler_receives_an_instance_of_the_model(settings: Settings, broker: Broker) -> None:
    parcel_settings = with_model(settings, "Parcel")
    received: list[Any] = []

    async def handler(order: Parcel) -> None:
        received.append(order)

    await OrderPublisher(broker, parcel_settings).publish(Parcel.model_validate(PARCEL))
    async with consuming(broker, handler, parcel_settings):
        await wait_until(lambda: len(received) == 1, what="the order handled")
    [order] = received
    assert type(order) is Parcel
    assert order.items[0].unit_price == Decimal("19.90")


async def test_a_new_field_with_a_default_takes_the_older_models_messages(settings: Settings, broker: Broker) -> None:
    """The API still runs version 1 while the consumers run version 2: its messages are handled, with the default."""
    received: list[Any] = []

    async def handler(order: ParcelWithGiftWrap) -> None:
        received.append(order)

    await OrderPublisher(broker, with_model(settings, "Parcel")).publish(Parcel.model_validate(PARCEL))
    async with consuming(broker, handler, with_model(settings, "ParcelWithGiftWrap")):
        await wait_until(lambda: len(received) == 1, what="the version 1 order handled by version 2")
    assert isinstance(received[0], ParcelWithGiftWrap)
    assert received[0].gift_wrap is False


@pytest.mark.parametrize(
    ("written_by", "written_extra", "read_by", "read_extra"),
    [
        pytest.param("Parcel", {}, "ParcelWithRequiredNote", {"note": "by the door"}, id="a new required field"),
        pytest.param("ParcelWithGiftWrap", {"gift_wrap": True}, "Parcel", {}, id="a field the consumer does not know"),
    ],
)
async def test_a_message_the_consumers_model_refuses_is_dead_lettered_once(
    settings: Settings,
    broker: Broker,
    written_by: str,
    written_extra: dict[str, Any],
    read_by: str,
    read_extra: dict[str, Any],
) -> None:
    """Never retried, never requeued: the order waits in the dead-letter queue for a consumer that can read it,
    and the consumer goes on with the orders it can."""
    received: list[str] = []

    async def handler(order: OrderBase) -> None:
        received.append(order.order_id)

    writer, reader = with_model(settings, written_by), with_model(settings, read_by)
    readable = encode_order(reader.order_type.model_validate({**PARCEL, "order_id": "P-2", **read_extra}))
    async with consuming(broker, handler, reader):
        await OrderPublisher(broker, writer).publish(writer.order_type.model_validate({**PARCEL, **written_extra}))
        await wait_until(lambda: depth_is(settings.dead_letter_queue, 1), what="the unreadable order dead-lettered")
        await publish_raw(settings.queue, raw_message("P-2", readable))
        await wait_until(lambda: received == ["P-2"], what="the next, readable order handled")
    [dead] = await drain(settings.dead_letter_queue)
    assert dead.message_id == "P-1"
    assert dead.headers[ERROR_TYPE_HEADER] == "InvalidMessage"
    assert await queue_depth(settings.queue) == 0


def raw_message(order_id: str, body: bytes) -> aio_pika.Message:
    return aio_pika.Message(body, content_type="application/json", message_id=order_id)


@pytest.mark.parametrize(
    ("reference", "says"),
    [
        ("shop_that_is_not_installed.models:Order", "cannot be loaded: No module named 'shop_that_is_not_installed'"),
        (f"{__name__}:Missing", "cannot be loaded"),
        (f"{__name__}:NotAnOrder", "is not a subclass of broker.OrderBase"),
        ("no-colon", "ORDERLANE_ORDER_MODEL"),
    ],
)
@pytest.mark.parametrize("program", ["api", "consumers"])
async def test_a_model_that_cannot_be_loaded_stops_the_process_with_one_line(
    settings: Settings, program: str, reference: str, says: str
) -> None:
    code, stderr = await asyncio.wait_for(
        run(program, env=environment(settings, ORDERLANE_ORDER_MODEL=reference)), timeout=60
    )
    assert code == 1
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert "ORDERLANE_ORDER_MODEL" in stderr
    assert says in stderr
