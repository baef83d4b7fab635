"""A quick performance check: orderlane beside raw aio-pika, measured in the same run, asserted as ratios only.

The bounds are loose on purpose: the machine is small and shared with the broker, so only a regression of the
kind that halves throughput or defeats priority should fail here. `python -m bench` measures properly.

Marked `perf`, which the default run leaves out (pyproject's addopts `-m "not perf"`): on a busy machine a
throughput ratio or a VIP's overtakers measure the neighbours too. Run them on a quiet machine with
`pytest -m perf tests/test_performance.py`. A `-m` given replaces the default one: `pytest -m "not cluster"`
runs them too, `pytest -m "not cluster and not perf"` does not. That the benchmark code itself runs is checked
in the default run, untimed, by tests/test_bench_runs.py; priority as behaviour by tests/test_holding.py,
tests/test_pipeline.py and tests/test_dispatcher.py.
"""

from __future__ import annotations

import shutil

import pytest

from bench.drain import measure_drain
from bench.intake import measure_intake
from bench.priority import System, measure_priority, orderlane_consumer
from tests.processes import free_port

pytestmark = pytest.mark.perf


async def test_drain_keeps_up_with_raw_aio_pika() -> None:
    result = await measure_drain(prefetch=32, count=3000, rounds=2)
    assert result.raw_per_second is not None and result.ratio is not None
    print(f"\ndrain: orderlane {result.orderlane_per_second:,.0f}/s, raw {result.raw_per_second:,.0f}/s")
    assert result.ratio >= 0.7


async def test_intake_keeps_up_with_raw_confirmed_publishing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API process runs without coverage's tracing (which `make test` passes to child processes through this
    variable): traced, it measures the tracer, at a third of its speed; the other tests cover its code."""
    monkeypatch.delenv("COVERAGE_PROCESS_CONFIG", raising=False)
    if shutil.which("wrk") is None:
        pytest.fail("wrk is not installed: `make test` installs it as root, else `sudo apt-get install wrk`")
    result = await measure_intake(concurrency=32, seconds=2, port=free_port())
    print(f"\nintake: API {result.api.per_second:,.0f}/s, raw {result.raw.per_second:,.0f}/s")
    assert result.api.errors == 0
    # At its defaults (the status store on) the API takes 0.43x what raw publishing does on this machine in the last
    # `python -m bench intake-peers` (docs/benchmarks.md), 0.45-0.49x in this test's runs: a loss of a quarter fails
    assert result.ratio >= 0.35


async def test_vips_posted_over_http_overtake_the_backlog(monkeypatch: pytest.MonkeyPatch) -> None:
    """The row whose VIPs are posted over HTTP: `python -m api` at its defaults (status store on), each VIP POSTed
    by a client process, timed from just before its POST (so the whole wait is known) and inside the consumer.
    Behind a backlog of 8,000, a VIP that did not overtake it would see thousands start first."""
    monkeypatch.delenv("COVERAGE_PROCESS_CONFIG", raising=False)  # untraced API, as in the intake test
    system = System("orderlane, VIPs over HTTP", orderlane_consumer, over_http=True)
    result = await measure_priority(system, handler_ms=5, backlog=8000, vips=5, vip_interval=0.05, warmup=0.3)
    print(f"\npriority over HTTP: VIP wait p50 {result.wait_p50_ms:.1f} ms, overtaken at most {result.overtaken_max}")
    assert result.conclusive, "the VIPs should arrive while the backlog is being drained"
    assert result.vips == 5 and result.overtaken_max <= 800
    assert result.steps is not None and result.steps.posted, "each VIP posted, and timed from just before its POST"


async def test_vip_orders_overtake_what_the_consumer_holds() -> None:
    """A window of 64 deliveries and 4 slots of 20 ms: without the local priority order a VIP would start behind
    the 60 regular orders held; with it, only slots that came free before it arrived go to regular orders (about
    one per 5 ms of the broker's latency)."""
    system = System("orderlane", orderlane_consumer, {"prefetch": 64, "concurrency": 4})
    result = await measure_priority(system, handler_ms=20, backlog=2000, vips=5, vip_interval=0.05, warmup=0.5)
    print(f"\npriority: VIP wait p50 {result.wait_p50_ms:.1f} ms, overtaken at most {result.overtaken_max}")
    assert result.conclusive, "the VIPs should arrive while the backlog is being drained"
    assert result.overtaken_max <= 16
