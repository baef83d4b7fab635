"""The client's examples as a shop would run them, configured by ORDERLANE_* and against the real broker and Redis:
examples/fastapi_client.py (a checkout reaches the queue once, a conflicting one gets 409, an order the broker does
not take 503), and docs/client.md's script, run as written."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from broker import Order, Settings
from examples.fastapi_client import app
from tests.amqp import delete_queues, drain, lane_queue, queue_depth
from tests.http import app_client
from tests.processes import PROJECT_ROOT, environment

GUIDE = PROJECT_ROOT / "docs" / "client.md"
EXAMPLE = PROJECT_ROOT / "examples" / "fastapi_client.py"


def python_block(after_heading: str, document: Path = GUIDE) -> str:
    """The first Python block of `document` under the heading `after_heading`."""
    section = document.read_text().split(f"\n{after_heading}\n", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert found is not None, after_heading
    return found.group(1)


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

        [message] = await drain(lane_queue(settings, 1))
        assert Order.model_validate_json(message.body) == Order(order_id="cart-1", priority=1, items=["book", "lamp"])

        await delete_queues(lane_queue(settings, 1))  # unroutable: the broker returns the message, the client raises
        refused = await http.post("/checkout", json={**cart, "checkout_id": "cart-3"})
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"


@pytest.mark.parametrize(("document", "heading"), [(GUIDE, "## FastAPI")])
def test_the_docs_show_the_example_as_it_is(document: Path, heading: str) -> None:
    """Every line of the FastAPI block is in examples/fastapi_client.py, in the same order."""
    example = iter(EXAMPLE.read_text().splitlines())
    for line in python_block(heading, document).splitlines():
        assert any(line == candidate for candidate in example), f"not in {EXAMPLE.name} (or out of order): {line!r}"


async def test_the_guides_script_runs_as_written(settings: Settings) -> None:
    script = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        python_block("## A script"),
        cwd=PROJECT_ROOT,
        env=environment(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await script.communicate()
    assert script.returncode == 0, err.decode()
    published, now = out.decode().splitlines()
    assert published == f"published to {lane_queue(settings, 0)} with priority 0"
    assert now.startswith("now order_id='A-1001' state='accepted'")
    assert await queue_depth(lane_queue(settings, 0)) == 1
