"""The steps of a VIP order's path in the priority benchmark, each timed on the machine's one wall clock.

- POST to publish: from just before the benchmark's POST to the API's publish (the message's published-at header,
  stamped as the API builds it: after the HTTP request, the validation and the status store's reservation);
- publish to received: from there until the consumer process has the delivery (`Delivery.received_at`);
- received to start: the consumer's own share, the wait for a free handler slot and the ack policy's prelude.

Only orders posted over HTTP have the first step; VIPs published straight to the broker start at their publish.
Without a precise publish time (`Delivery.published_at` None) the first two steps are unknown, the last is not.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from consumers.delivery import Delivery


@dataclass(frozen=True, slots=True)
class Stamps:
    """One VIP's times, seconds since the epoch."""

    sent_at: float | None
    """Just before the POST; None for a VIP published straight to the broker."""
    published_at: float | None
    received_at: float
    started_at: float


@dataclass(frozen=True, slots=True)
class Spread:
    p50_ms: float
    max_ms: float


@dataclass(frozen=True, slots=True)
class Steps:
    """Each step's p50 and max over a run's VIPs (or the median of those over rounds)."""

    posted: bool
    """The VIPs were posted over HTTP, each timed from just before its POST."""
    post_to_publish: Spread | None
    publish_to_received: Spread | None
    received_to_start: Spread
    total: Spread | None
    """From the POST (or the publish) to the handler's start: the VIP's whole wait on this clock; None where the
    publish time is unknown for a VIP published straight to the broker."""


def stamps(sent_at: float | None, delivery: Delivery, started_at: float) -> Stamps:
    assert delivery.received_at is not None, "a delivery as the consumer describes it"
    return Stamps(sent_at, delivery.published_at, delivery.received_at, started_at)


def _spread(seconds: Sequence[float]) -> Spread:
    return Spread(statistics.median(seconds) * 1000, max(seconds) * 1000)


def _spread_of(seconds: Sequence[float | None]) -> Spread | None:
    """None if any VIP lacks the step."""
    known = [s for s in seconds if s is not None]
    return _spread(known) if known and len(known) == len(seconds) else None


def _between(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else end - start


def summarize_steps(vips: Sequence[Stamps]) -> Steps:
    return Steps(
        posted=all(vip.sent_at is not None for vip in vips),
        post_to_publish=_spread_of([_between(vip.sent_at, vip.published_at) for vip in vips]),
        publish_to_received=_spread_of([_between(vip.published_at, vip.received_at) for vip in vips]),
        received_to_start=_spread([vip.started_at - vip.received_at for vip in vips]),
        total=_spread_of([_between(vip.sent_at or vip.published_at, vip.started_at) for vip in vips]),
    )


def _median_spread(spreads: Sequence[Spread | None]) -> Spread | None:
    known = [s for s in spreads if s is not None]
    if not known or len(known) < len(spreads):
        return None
    return Spread(statistics.median(s.p50_ms for s in known), statistics.median(s.max_ms for s in known))


def median_steps(rounds: Sequence[Steps]) -> Steps:
    """The rounds of one system as one row: the median of each step's p50 and of its max."""
    received_to_start = _median_spread([r.received_to_start for r in rounds])
    assert received_to_start is not None
    return Steps(
        posted=all(r.posted for r in rounds),
        post_to_publish=_median_spread([r.post_to_publish for r in rounds]),
        publish_to_received=_median_spread([r.publish_to_received for r in rounds]),
        received_to_start=received_to_start,
        total=_median_spread([r.total for r in rounds]),
    )
