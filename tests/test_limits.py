"""The per-key token buckets, on a clock the test moves."""

from __future__ import annotations

import pytest

from api.limits import TokenBuckets
from broker.errors import retry_after_seconds


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_goes_at_once_then_the_rate_holds() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=10, burst=3, clock=clock)
    assert [buckets.take(1) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take(1) == pytest.approx(0.1)  # the next token, a tenth of a second away
    clock.now += 0.1
    assert buckets.take(1) == 0.0
    assert buckets.take(1) == pytest.approx(0.1)


def test_a_refused_request_costs_nothing_and_keys_are_apart() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=1, burst=1, clock=clock)
    assert buckets.take(1) == 0.0
    assert [buckets.take(1) for _ in range(5)] == [pytest.approx(1.0)] * 5  # refusals do not push it further
    assert buckets.take(2) == 0.0


def test_after_a_pause_no_more_than_the_burst_is_saved_up() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=2, clock=clock)  # burst: a second's worth, 2
    clock.now += 3600
    assert [buckets.take(7) == 0.0 for _ in range(3)] == [True, True, False]


@pytest.mark.parametrize(("wait", "header"), [(0.01, "1"), (1.0, "1"), (1.2, "2"), (99.5, "100")])
def test_retry_after_is_whole_seconds_never_zero(wait: float, header: str) -> None:
    assert str(retry_after_seconds(wait)) == header
