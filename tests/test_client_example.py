"""examples/fastapi_client.py as a shop would run it, configured by ORDERLANE_* and against the real broker and
Redis: a checkout reaches the queue once, a conflicting one gets 409, an order the broker does not take 503."""

from __future__ import annotations

import pytest

from broker import Order, Settings
from examples.fastapi_client import app
from tests.amqp import delete_queues, drain
from tests.http import app_client


async def test_the_example_submits_a_checkout_once_and_refuses_a_conflict(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORDERLANE_AMQP_URL", str(settings.amqp_url))
    monkeypatch.setenv("ORDERLANE_QUEUE", settings.queue)  # the lifespan's client reads the environment
    cart = {"checkout_id": "cart-1", "items": ["book", "lamp"], "express": True}
    async with app_client(app) as http:
        placed = await http.post("/checkout", json=cart)
        assert placed.status_code == 202
        assert placed.json() == {"order_id": "cart-1", "state": "accepted"}
        again = await http.post("/checkout", json=cart)  # the front end retried
        assert (again.status_code, again.json()["state"]) == (200, "accepted")
        clash = await http.post("/checkout", json={**cart, "items": ["lamp"]})
        assert clash.status_code == 409
        invalid = await http.post("/checkout", json={**cart, "checkout_id": "cart 2"})
        assert invalid.status_code == 422

        [message] = await drain(settings.queue)
        assert Order.model_validate_json(message.body) == Order(order_id="cart-1", priority=1, items=["book", "lamp"])

        await delete_queues(settings.queue)  # unroutable: the broker returns the message, the client raises
        refused = await http.post("/checkout", json={**cart, "checkout_id": "cart-3"})
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
