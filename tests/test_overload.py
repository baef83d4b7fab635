"""Overload: the lanes' wait estimates, and admission that refuses the least urgent orders first (broker/estimates.py,
broker/intake.py), on the real broker and status store."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from api.app import create_app
from broker.client import AsyncOrderClient
from broker.connection import Broker
from broker.errors import BacklogOverBudget
from broker.estimates import DrainRate, LaneWait, WaitEstimates, lane_waits
from broker.messages import Order
from broker.queues import QueueStats
from broker.settings import Settings
from broker.status import Transition
from broker.status_store import StatusStore
from broker.topology import build_topology
from tests.amqp import lane_queue, operator_channel, publish_raw, queue_depth, wait_until
from tests.consuming import consuming, order_message
from tests.http import app_client

MAX_WAIT = 2.0


def order(order_id: str, **fields: Any) -> dict[str, Any]:
    return {"order_id": order_id, "priority": 5, "items": ["book"], **fields}


# --- pure functions -----------------------------------------------------------------------------------------------


def test_a_lane_waits_behind_its_own_backlog_and_every_more_urgent_one() -> None:
    waits = lane_waits(["q.high", "q.mid", "q"], [10, 0, 30], per_second=20.0)
    assert [wait.ahead for wait in waits] == [10, 10, 40]
    assert [wait.seconds for wait in waits] == [0.5, 0.5, 2.0]


def test_what_was_drained_since_the_count_leaves_the_most_urgent_lanes_first() -> None:
    waits = lane_waits(["q.high", "q"], [10, 30], per_second=20.0, drained=15.5)
    assert [wait.ahead for wait in waits] == [0, 25]


async def test_orders_published_since_the_last_sample_count_in_their_lane(settings: Settings) -> None:
    """Between two samples the estimate counts what this process published: a second under the budget must not
    admit a second's worth of a flash sale."""

    class Counter:
        async def departed(self) -> int:
            return 0  # nothing drains

    async def depths() -> list[QueueStats]:
        return [QueueStats(queue=queue, messages=10, consumers=1) for queue in (regular, urgent)]

    topology = build_topology(settings)
    regular, urgent = lane_queue(settings, 5), lane_queue(settings, 0)
    estimates = WaitEstimates(topology, depths, Counter())  # type: ignore[arg-type]
    await estimates.sample()
    await estimates.sample()
    before = {wait.queue: wait.ahead for wait in estimates.lanes}
    for _ in range(3):
        estimates.published(5)
    estimates.published(0)
    after = {wait.queue: wait.ahead for wait in estimates.lanes}
    assert after == {urgent: before[urgent] + 1, regular: before[regular] + 4}
    await estimates.sample()
    assert {wait.queue: wait.ahead for wait in estimates.lanes} == before, "a new sample counts them at the broker"


async def test_an_orders_expected_wait_is_its_lanes_with_the_orders_ahead_of_it(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What intake reads for each order (its own lane's wait) is what /queues shows for that lane."""
    departures = iter([0, 40])
    now = [100.0]
    monkeypatch.setattr("broker.estimates.time", SimpleNamespace(monotonic=lambda: now[0]))  # its clock alone

    class Counter:
        async def departed(self) -> int:
            return next(departures)  # 40 drained between the two samples

    async def depths() -> list[QueueStats]:
        return [QueueStats(queue=queue, messages=messages, consumers=1) for queue, messages in ready.items()]

    topology = build_topology(settings)
    ready = {lane_queue(settings, 0): 30, lane_queue(settings, 5): 50}
    estimates = WaitEstimates(topology, depths, Counter())  # type: ignore[arg-type]
    assert estimates.current(5) is None, "no sample yet"
    await estimates.sample()
    now[0] += 1.0
    await estimates.sample()  # 40 drained in a second
    now[0] += 0.25  # 10 more taken since, from the urgent lane first
    shown = {wait.queue: wait.seconds for wait in estimates.lanes}
    for priority in (0, 5):
        assert estimates.current(priority) == shown[lane_queue(settings, priority)]
    assert (estimates.current(0), estimates.current(5)) == (20 / 40, 70 / 40)


def test_an_estimate_is_unknown_without_a_rate_and_endless_without_a_drain() -> None:
    assert LaneWait("q", ahead=5, per_second=None).seconds is None
    assert LaneWait("q", ahead=5, per_second=0.0).seconds == math.inf
    assert LaneWait("q", ahead=0, per_second=0.0).seconds == 0.0


def test_the_drain_rate_is_over_its_window_and_restarts_with_a_new_counter() -> None:
    rate = DrainRate(window=10)
    rate.add(0.0, 100)
    assert rate.per_second is None, "one sample is no rate"
    rate.add(1.0, 150)
    assert rate.per_second == 50
    for second in range(2, 30):
        rate.add(float(second), 150 + (second - 1) * 10)  # 10/s from here on
    assert rate.per_second == pytest.approx(10, rel=0.15), "the burst has left the window"
    rate.add(30.0, 3)  # a Redis restarted empty
    assert rate.per_second is None


def test_an_idle_stretch_does_not_dilute_the_rate_a_backlog_shows() -> None:
    """Idle consumers drain what arrives (a trickle); when a flash sale starts, the rate is what they drain from
    then on, not that averaged with the idle seconds before."""
    rate = DrainRate(window=10)
    for second in range(9):
        rate.add(float(second), second, waiting=False)  # 1/s arrives and is taken at once
    assert rate.per_second == 1
    for second in range(9, 12):
        rate.add(float(second), 8 + (second - 8) * 100)  # the sale: 100/s drained, orders waiting
    assert rate.per_second == 100


def test_retry_after_is_when_the_orders_ahead_now_are_processed() -> None:
    assert BacklogOverBudget("o", 5, expected_wait=9.2, max_wait=2.0).retry_after_seconds == 10
    assert BacklogOverBudget("o", 5, expected_wait=math.inf, max_wait=2.0).retry_after_seconds == 2
    assert BacklogOverBudget("o", 5, expected_wait=2.1, max_wait=2.0).retry_after_seconds == 3


# --- the store's departure counter ----------------------------------------------------------------------------------


async def test_the_store_counts_attempts_that_left_a_work_queue(store: StatusStore) -> None:
    def moved(order_id: str, state: str, attempt: int) -> Transition:
        return Transition(order_id, state, attempt=attempt, at=1.0, fields={"queue": "q"})  # type: ignore[arg-type]

    assert await store.departed() == 0
    await store.record(moved("a", "processing", 1))
    await store.record(moved("b", "processing", 1))
    assert await store.departed() == 0, "an attempt that runs has not left yet"
    await store.record(moved("a", "retrying", 1))
    await store.record(moved("a", "processing", 2))
    await store.record(moved("a", "processed", 2))
    await store.record(moved("b", "dead_lettered", 1))
    assert await store.departed() == 3


# --- admission through the API --------------------------------------------------------------------------------------


@pytest.fixture
def admitting(settings: Settings) -> Settings:
    return settings.model_copy(update={"admission_max_wait": MAX_WAIT})


@pytest.fixture
async def client(admitting: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(create_app(admitting)) as http:
        yield http


async def lanes(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    lanes: list[dict[str, Any]] = (await client.get("/queues")).json()["lanes"]
    return lanes


async def ahead_of(client: httpx.AsyncClient, queue: str) -> tuple[int, float | None]:
    """What the estimates show for `queue`: the orders ahead of a new one, and the drain rate."""
    lane = next(lane for lane in await lanes(client) if lane["queue"] == queue)
    return lane["ahead"], lane["drain_per_second"]


async def backlog_seen(client: httpx.AsyncClient, queue: str, ahead: int) -> bool:
    """The estimates show at least `ahead` orders in (and before) `queue` and no drain: nothing consumes."""
    seen, rate = await ahead_of(client, queue)
    return seen >= ahead and rate == 0


async def refused_count(client: httpx.AsyncClient, priority: int) -> float:
    text = (await client.get("/metrics")).text
    prefix = f'orderlane_orders_refused_total{{priority="{priority}"}} '
    return sum(float(line.removeprefix(prefix)) for line in text.splitlines() if line.startswith(prefix))


async def test_over_budget_the_least_urgent_are_refused_and_a_vip_still_gets_in(
    client: httpx.AsyncClient, admitting: Settings
) -> None:
    regular_lane, urgent_lane = lane_queue(admitting, 5), lane_queue(admitting, 0)
    assert regular_lane != urgent_lane
    assert (await client.post("/orders", json=order("before"))).status_code == 202
    await publish_raw(regular_lane, *(order_message(f"backlog-{n}") for n in range(50)))
    await wait_until(lambda: backlog_seen(client, regular_lane, 51), what="the estimates see the backlog undrained")

    refused = await client.post("/orders", json=order("late"))
    assert refused.status_code == 429, refused.text
    assert refused.json()["details"][0]["type"] == "backlog_over_budget"
    assert refused.headers["Retry-After"] == str(math.ceil(MAX_WAIT)), "nothing drains: try again after the budget"
    assert await queue_depth(regular_lane) == 51, "a refused order is not published"
    assert await refused_count(client, 5) == 1
    shown = f'orderlane_expected_wait_seconds{{queue="{regular_lane}"}} +Inf'
    assert shown in (await client.get("/metrics")).text.splitlines(), "the metric shows a wait without end"

    vip = await client.post("/orders", json=order("vip", user_type="vip"))
    assert vip.status_code == 202 and vip.json()["queue"] == urgent_lane, vip.text
    assert (await client.post("/orders", json=order("before"))).status_code == 200, "a known order is answered"

    await publish_raw(urgent_lane, *(order_message(f"urgent-{n}", priority=10) for n in range(5)))
    await wait_until(lambda: backlog_seen(client, urgent_lane, 6), what="the urgent lane's own backlog seen")
    assert (await client.post("/orders", json=order("vip-2", user_type="vip"))).status_code == 429, (
        "urgent orders are refused only when they alone would wait past the budget"
    )

    async with operator_channel() as channel:
        for queue in (regular_lane, urgent_lane):
            await (await channel.declare_queue(queue, passive=True)).purge()

    async def emptied() -> bool:
        return (await ahead_of(client, regular_lane))[0] == 0

    await wait_until(emptied, what="the estimates see the queues empty")
    again = await client.post("/orders", json=order("late"))
    assert again.status_code == 202, "a refused order is taken when posted again later"


async def test_the_python_client_raises_the_refusal_with_its_retry_time(admitting: Settings, broker: Broker) -> None:
    regular_lane = lane_queue(admitting, 5)
    await publish_raw(regular_lane, *(order_message(f"backlog-{n}") for n in range(20)))
    admitted: list[str] = []
    refusals: list[BacklogOverBudget] = []
    async with AsyncOrderClient(admitting, registry=CollectorRegistry()) as orders:

        async def refused() -> bool:
            order_id = f"new-{len(admitted)}"
            try:
                await orders.submit(Order(order_id=order_id, items=["a"]))
            except BacklogOverBudget as exc:
                refusals.append(exc)
                return True
            admitted.append(order_id)  # the estimates are not known yet (two samples make a rate): admitted
            return False

        await wait_until(refused, what="the client refuses once its estimates see the undrained backlog")
    assert refusals[0].priority == 5 and refusals[0].retry_after_seconds == math.ceil(MAX_WAIT)
    assert await queue_depth(regular_lane) == 20 + len(admitted), "the refused order was not published"


async def test_the_estimate_follows_the_consumers_drain(settings: Settings, broker: Broker, store: StatusStore) -> None:
    """Without admission too: the estimates are there whenever the status store is."""

    async def slow(order: Order) -> None:
        await asyncio.sleep(0.01)

    regular_lane = lane_queue(settings, 5)
    await publish_raw(regular_lane, *(order_message(f"drain-{n}") for n in range(400)))
    async with app_client(create_app(settings)) as client, consuming(broker, slow, settings, store):

        async def drained_and_estimated() -> bool:
            lane = next(lane for lane in await lanes(client) if lane["queue"] == regular_lane)
            rate, wait = lane["drain_per_second"], lane["expected_wait_seconds"]
            return bool(rate) and lane["ahead"] > 0 and wait == pytest.approx(lane["ahead"] / rate)

        await wait_until(drained_and_estimated, what="a drain rate and a finite wait while the backlog drains")
        posted = await client.post("/orders", json=order("estimated"))
        assert posted.status_code == 202
        expected_start = datetime.fromisoformat(posted.json()["expected_start"])
        assert expected_start > datetime.now(UTC), "behind a backlog, it starts later"
        status = (await client.get("/orders/estimated")).json()
        assert datetime.fromisoformat(status["expected_start"]) == expected_start
