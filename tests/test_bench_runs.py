"""The benchmarks' own code runs end to end, on tiny workloads, in the default test run: each scenario that
tests/test_performance.py times (drain, intake, priority with VIPs published and posted over HTTP) completes and
gives a whole, well-formed result, and so do the status scenario's drain (with what each order cost in CPU), the
overload scenario's flash sale, admission off and on, the deadlines scenario, the alarm scenario, the levels
scenario and the idle scenario. Nothing here is timed or compared: the speed is test_performance's (`-m perf`)."""

from __future__ import annotations

import shutil
from pathlib import Path
from xml.etree import ElementTree

import pytest
from prometheus_client import CollectorRegistry

from bench.alarm import measure_alarm
from bench.deadlines import Expiry, measure_deadlines
from bench.drain import measure_drain
from bench.idle import IDLE_SYSTEMS, measure_idle, show_idle
from bench.intake import measure_intake
from bench.intake_peers import minimal, minimal_store
from bench.levels import LEVELS, measure_levels, show_levels
from bench.overload import OverloadRun, Sale, measure_overload, plot_overload
from bench.priority import PriorityResult, System, measure_priority, orderlane_consumer
from bench.shop import Shop
from bench.status import drain_measure, measure_status
from broker.settings import Settings
from broker.status_store import open_status_store
from tests.amqp import queue_depth
from tests.faults import require_rabbitmqctl
from tests.http import app_client
from tests.processes import free_port

BACKLOG = 300
VIPS = 3


async def test_the_drain_benchmark_drains_every_order_through_both_consumers() -> None:
    result = await measure_drain(prefetch=8, count=200, rounds=1)  # returns once each consumer handled all 200
    assert (result.prefetch, result.messages) == (8, 200)
    assert result.orderlane_per_second > 0 and result.raw_per_second is not None and result.raw_per_second > 0
    assert result.ratio is not None


async def test_the_intake_benchmark_posts_through_wrk_and_publishes_raw() -> None:
    if shutil.which("wrk") is None:
        pytest.fail("wrk is not installed: `make test` installs it as root, else `sudo apt-get install wrk`")
    result = await measure_intake(concurrency=4, seconds=1, port=free_port())
    assert result.concurrency == 4
    assert result.api.requests > 0 and result.api.errors == 0, "every POST wrk made was accepted"
    assert result.api.per_second > 0 and result.raw.per_second > 0


async def test_the_minimal_app_with_the_store_reserves_each_order_and_publishes_a_repost_never(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The intake-peers row that prices orderlane's status store on the minimal app: an order is published once and
    recorded `accepted`; posted again, it is answered from the store and nothing more is published."""
    monkeypatch.setenv("ORDERLANE_QUEUE", settings.queue)  # the store's namespace, read by the app's lifespan
    monkeypatch.setattr(minimal, "QUEUE", settings.queue)
    monkeypatch.setattr(minimal_store, "QUEUE", settings.queue)
    order = {"order_id": "minimal-1", "priority": 1, "items": ["widget"]}
    async with app_client(minimal_store.app) as http:
        first = await http.post("/orders", json=order)
        again = await http.post("/orders", json=order)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["state"] == "accepted"
    assert await queue_depth(settings.queue) == 1
    async with open_status_store(settings, CollectorRegistry()) as store:
        assert store is not None
        status = await store.get("minimal-1")
    assert status is not None and (status.state, status.priority) == ("accepted", 1)


def assert_every_vip_found(result: PriorityResult, *, posted: bool) -> None:
    """Each VIP started and was placed in the timeline, and its path was stamped step by step."""
    assert (result.backlog, result.vips) == (BACKLOG, VIPS)
    assert 0 <= result.overtaken_max <= BACKLOG
    assert result.steps is not None, "orderlane's consumer stamps each VIP's path"
    assert result.steps.posted is posted
    assert (result.steps.post_to_publish is not None) is posted, "the POST step exists only for posted VIPs"
    assert result.steps.publish_to_received is not None and result.steps.total is not None


async def test_the_status_benchmark_drains_with_the_store_off_and_on_and_says_what_each_order_cost() -> None:
    """Its settled drain: a handler that takes a while, measured over the middle half of the backlog."""
    ran: list[None] = []
    drain = drain_measure(4_000, handler_ms=1, settled=True)
    result = await measure_status("drain", drain, rounds=1, ran=lambda: ran.append(None))
    assert len(ran) == 2
    for side in (result.off, result.on):
        assert side.per_second > 0 and side.unexpected == 0, "every order drained, and with the store, recorded"
        assert set(side.cpu_us) == {"process", "redis", "broker"}, "the consumer, and the services on this host"
        assert side.cpu_us["process"] > 0 and side.cpu_us["broker"] > 0
    assert result.on.cpu_us["redis"] > result.off.cpu_us["redis"], "only the store on writes to Redis"


async def test_the_priority_benchmark_finds_every_vip_published_to_the_broker() -> None:
    system = System("orderlane", orderlane_consumer)
    result = await measure_priority(system, handler_ms=1, backlog=BACKLOG, vips=VIPS, vip_interval=0.01, warmup=0)
    assert result.system == "orderlane"
    assert_every_vip_found(result, posted=False)


async def test_the_priority_benchmark_finds_every_vip_posted_over_http() -> None:
    system = System("orderlane, VIPs over HTTP", orderlane_consumer, over_http=True)
    result = await measure_priority(system, handler_ms=1, backlog=BACKLOG, vips=VIPS, vip_interval=0.01, warmup=0)
    assert_every_vip_found(result, posted=True)


async def test_the_idle_benchmark_finds_every_vip_with_nothing_ahead_and_times_the_store() -> None:
    ran: list[None] = []
    result = await measure_idle(VIPS, interval=0.01, warmup=0, rounds=1, ran=lambda: ran.append(None))
    assert len(ran) == len(IDLE_SYSTEMS) + 1
    assert [r.system for r in result.vips] == list(IDLE_SYSTEMS)
    for row in result.vips:
        assert (row.backlog, row.vips) == (0, VIPS), "every VIP started, none behind a backlog"
    posted = [r for r in result.vips if r.steps is not None and r.steps.posted]
    assert len(posted) == 2 and all(r.steps and r.steps.post_to_publish for r in posted), (
        "the POST step, store on and off"
    )
    assert result.store.after_quiet_ms > 0 and result.store.back_to_back_ms > 0
    assert "after 10 ms quiet" in show_idle([result]), "as long a quiet as between two VIPs"


@pytest.mark.parametrize("peer", ["faststream p50", "taskiq"])
async def test_the_peers_benchmark_finds_every_vip_a_peer_took(peer: str) -> None:
    """Each peer consumes the queue as it would declare it (Taskiq declares it itself: equal arguments or a 406)."""
    from bench.peers import PEER_SYSTEMS  # the `peers` extra (make install has it), as bench/__main__.py imports it

    [system] = [system for system in PEER_SYSTEMS if system.name == peer]
    result = await measure_priority(system, handler_ms=1, backlog=BACKLOG, vips=VIPS, vip_interval=0.01, warmup=0)
    assert (result.system, result.backlog, result.vips) == (peer, BACKLOG, VIPS)
    assert result.steps is None, "a peer's path is not stamped"
    assert result.wait_max_ms >= result.wait_p50_ms > 0 and result.regular_per_second > 0


def assert_whole(run: OverloadRun) -> None:
    """Every order posted is told apart by how it fared, every accepted one is found processed or queued, and every
    accepted VIP's wait is known."""
    for kind in (run.vips, run.regular):
        assert kind.first_try + kind.after_retries + kind.never == kind.posted
    settled = run.settled
    assert settled.accepted == sum(k.posted - k.never for k in (run.vips, run.regular))
    assert settled.lost == 0 and settled.processed + settled.queued == settled.accepted, "nothing accepted is lost"
    assert settled.queued == settled.ready_in_lanes, "what the store says waits is what the lanes hold"
    assert run.vips_not_started == 0 and len(run.vip_waits) == run.vips.posted - run.vips.never
    assert run.quiet_vip_wait is not None, "the VIPs posted before the sale started"
    assert run.samples and run.backlog_max >= run.backlog_final == run.samples[-1].backlog
    assert run.retries >= 0 and (run.retry_late_ms is None or run.retry_late_ms.p50_ms >= 0), "never before Retry-After"


async def test_the_overload_benchmark_runs_a_sale_without_and_with_admission(tmp_path: Path) -> None:
    sale = Sale(seconds=2, budget=1, shop=Shop(handler_ms=20, concurrency=1), warmup_seconds=1)  # 150/s, 1 % VIP
    runs: list[None] = []
    result = await measure_overload(sale, lambda: runs.append(None))
    assert len(runs) == 2
    assert (result.off.admission_max_wait, result.on.admission_max_wait) == (None, 1)
    for run in (result.off, result.on):
        assert run.vips.posted > 0 and run.drain_per_second > 0
        assert_whole(run)
    lines = ElementTree.parse(plot_overload([result], tmp_path / "overload.svg")).getroot()
    polylines = lines.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(polylines) == 8, "backlog and estimate, each off, on and the budget; VIP waits off and on"


async def test_the_alarm_benchmark_finds_orders_refused_under_a_memory_alarm_and_taken_after_it() -> None:
    require_rabbitmqctl()
    rounds: list[None] = []
    result = await measure_alarm(rounds=1, ran=lambda: rounds.append(None))
    assert len(rounds) == len(result.rounds) == 1
    found = result.rounds[0]
    assert found.first_state == "unconfirmed", "the blocked order may still be stored when the alarm clears"
    assert found.taken_after_raised >= 0 and min(found.first_refused_ms, found.not_ready_ms) > 0
    assert found.refused_again_ms > 0 and found.taken_again_ms > 0, "refused again, then taken once it cleared"
    assert result.publish_timeout_s == Settings().publish_timeout


async def test_the_levels_benchmark_measures_each_queue_the_broker_took() -> None:
    rounds: list[None] = []
    results = await measure_levels(messages=200, rounds=1, progress=lambda: rounds.append(None))
    assert [result.levels for result in results] == list(LEVELS) and len(rounds) == len(LEVELS)
    for result in results:
        [run] = result.runs
        assert min(run.publish_per_second, run.consume_per_second) > 0, "every message published, then consumed"
        assert min(run.publish_broker_us, run.consume_broker_us) >= 0
    assert "none" in show_levels(results)


async def test_the_deadlines_benchmark_finds_short_deadlines_expired_and_long_ones_processed() -> None:
    # 100 orders ahead at a ceiling of 50/s (a 20 ms handler, one at a time) take 2 s at least: 0.5 s cannot be met
    expiry = Expiry(backlog_seconds=2, short_seconds=0.5, shop=Shop(handler_ms=20, concurrency=1))
    result = await measure_deadlines(expiry, lambda: None)
    short, long = result.short, result.long
    assert short.posted == short.accepted == short.expired > 0 and short.started == 0, "expired, never handled"
    assert long.posted == long.accepted == long.processed == long.started > 0, "processed within their deadline"
    assert short.unsettled == long.unsettled == 0
    assert result.consumer_expired == result.dead_letters == short.expired
    assert result.consumer_processed == expiry.backlog + long.processed
