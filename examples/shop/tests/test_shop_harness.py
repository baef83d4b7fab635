"""The shop's API and consumer in one process with orderlane's harness (an in-memory broker, the real API and ack
policy), writing into PostgreSQL."""

from __future__ import annotations

from shop.handler import ShopHandler
from shopkit import ShopDatabase, order_body

from broker import Settings
from consumers.testing import OrderlaneHarness


async def test_a_posted_order_is_processed_into_its_row(database: ShopDatabase, settings: Settings) -> None:
    async with OrderlaneHarness(ShopHandler(database.url), settings=settings) as harness:
        posted = await harness.client.post("/orders", json=order_body("hx-1"))
        assert posted.status_code == 202, posted.text
        await harness.drain()
        status = await harness.client.get("/orders/hx-1")
        assert status.json()["state"] == "processed", status.text
        assert harness.dead_letters == []
    assert await database.count("orders", "hx-1") == 1
    assert await database.count("order_lines", "hx-1") == 2


async def test_a_body_the_model_refuses_is_422_and_never_published(database: ShopDatabase, settings: Settings) -> None:
    no_tea = [{"sku": "TEA-001", "quantity": 0, "unit_price": "4.50"}]
    async with OrderlaneHarness(ShopHandler(database.url), settings=settings) as harness:
        refused = await harness.client.post("/orders", json=order_body("hx-2", items=no_tea))
        assert refused.status_code == 422
        assert refused.json()["details"][0]["loc"] == ["items", 0, "quantity"]
        assert harness.published == []
    assert await database.count("orders", "hx-2") == 0
