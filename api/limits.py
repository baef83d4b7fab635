"""Limits on requests: how many may be in flight at once (beyond it, 503 at once rather than a place in a queue
without end), and how fast each API key may send them (beyond it, 429)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from prometheus_client import Counter
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import overloaded
from api.metrics import SampledGauge

UNLIMITED_PATHS = frozenset({"/healthz", "/metrics"})
"""A liveness probe must not fail because the API is busy (a restart would make it busier), nor a scrape, which is
when it matters. `/readyz` is limited: an overloaded API is not ready for more."""


class InFlightLimit:
    """Pure ASGI middleware counting the requests between their head and their response. A request still sending
    its body counts: `api.connections` bounds how many of those there can be, below this limit."""

    def __init__(self, app: ASGIApp, limit: int, refused: Counter, in_flight: SampledGauge) -> None:
        self.app = app
        self.limit = limit
        self.refused = refused
        self.in_flight = 0
        in_flight.read_from(lambda: self.in_flight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            self.refused.inc()
            await overloaded(self.limit)(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class TokenBuckets:
    """A token bucket per key, kept as GCRA's one timestamp: `rate` requests a second on average, and `burst` at
    once after a pause (by default, a second's worth). In this process only: with N API processes, a key may send
    N times as much."""

    def __init__(self, rate: float, burst: int | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 1 / rate
        self.tolerance = ((burst or max(1, math.ceil(rate))) - 1) * self.interval
        self.clock = clock
        self._next_due: dict[int, float] = {}

    def take(self, key: int) -> float:
        """0 if a request with `key` may go now (it is counted); else the seconds until one may."""
        now = self.clock()
        due = max(self._next_due.get(key, now), now)
        wait = due - self.tolerance - now
        if wait > 0:
            return wait
        self._next_due[key] = due + self.interval
        return 0.0
