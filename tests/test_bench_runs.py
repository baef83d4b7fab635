"""The benchmarks' own code runs end to end, on tiny workloads, in the default test run: each scenario that
tests/test_performance.py times (drain, intake, priority with VIPs published and posted over HTTP) completes and
gives a whole, well-formed result. Nothing here is timed or compared: the speed is test_performance's (`-m perf`)."""

from __future__ import annotations

import shutil

import pytest

from bench.drain import measure_drain
from bench.intake import measure_intake
from bench.priority import PriorityResult, System, measure_priority, orderlane_consumer
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
        pytest.fail("wrk is not installed: `make test` installs it (apt-get install wrk)")
    result = await measure_intake(concurrency=4, seconds=1, port=free_port())
    assert result.concurrency == 4
    assert result.api.requests > 0 and result.api.errors == 0, "every POST wrk made was accepted"
    assert result.api.per_second > 0 and result.raw.per_second > 0


def assert_every_vip_found(result: PriorityResult, *, posted: bool) -> None:
    """Each VIP started and was placed in the timeline, and its path was stamped step by step."""
    assert (result.backlog, result.vips) == (BACKLOG, VIPS)
    assert 0 <= result.overtaken_max <= BACKLOG
    assert result.steps is not None, "orderlane's consumer stamps each VIP's path"
    assert result.steps.posted is posted
    assert (result.steps.post_to_publish is not None) is posted, "the POST step exists only for posted VIPs"
    assert result.steps.publish_to_received is not None and result.steps.total is not None


async def test_the_priority_benchmark_finds_every_vip_published_to_the_broker() -> None:
    system = System("orderlane", orderlane_consumer)
    result = await measure_priority(system, handler_ms=1, backlog=BACKLOG, vips=VIPS, vip_interval=0.01, warmup=0)
    assert result.system == "orderlane"
    assert_every_vip_found(result, posted=False)


async def test_the_priority_benchmark_finds_every_vip_posted_over_http() -> None:
    system = System("orderlane, VIPs over HTTP", orderlane_consumer, over_http=True)
    result = await measure_priority(system, handler_ms=1, backlog=BACKLOG, vips=VIPS, vip_interval=0.01, warmup=0)
    assert_every_vip_found(result, posted=True)
