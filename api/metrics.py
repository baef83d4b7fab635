"""The API's Prometheus metrics, and the pure ASGI middleware that counts requests.

With several API processes, their values meet in prometheus-client's multiprocess directory (`api.multiprocess`),
where a gauge is only what a process `set`: so gauges read from a function (`set_function`) are sampled into their
values instead (`SampledGauge`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.multiprocess import registry_to_scrape, sharing
from broker.estimates import WaitEstimates
from broker.intake import IntakeMetrics

UNMATCHED: Final = "unmatched"


class SampledGauge(Gauge):
    """A gauge read from its source when sampled: `set_function`, except that in multiprocess mode the value reaches
    the other processes, which only see what was `set`."""

    def _metric_init(self) -> None:
        super()._metric_init()
        self._source: Callable[[], float] | None = None

    def read_from(self, source: Callable[[], float]) -> None:
        self._source = source

    def sample(self) -> None:
        if self._source is not None:
            self.set(self._source())


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "orderlane_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.intake = IntakeMetrics(self.registry)
        self.overloaded = Counter(
            "orderlane_http_overloaded",
            "Requests answered 503 because ORDERLANE_HTTP_MAX_CONCURRENCY requests were in flight",
            registry=self.registry,
        )
        self.requests_in_flight = SampledGauge(
            "orderlane_http_requests_in_flight",
            "Requests between their head and their response (limit: ORDERLANE_HTTP_MAX_CONCURRENCY)",
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "orderlane_http_rate_limited",
            "Requests answered 429 because their API key (its position in ORDERLANE_API_KEYS) was over its rate",
            ["key"],
            registry=self.registry,
        )
        self.connections_closed = Counter(
            "orderlane_http_connections_closed",
            "Connections the API closed before a whole request: header_timeout; too_many_waiting or too_many_bodies "
            "(the oldest, beyond ORDERLANE_HTTP_MAX_WAITING_CONNECTIONS or ORDERLANE_HTTP_MAX_INCOMPLETE_BODIES)",
            ["reason"],
            registry=self.registry,
        )
        self.waiting_connections = SampledGauge(
            "orderlane_http_waiting_connections",
            "Connections waiting for a request head: new, idle between requests, or sending it",
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.incomplete_bodies = SampledGauge(
            "orderlane_http_incomplete_bodies",
            "Requests whose body is not all in yet",
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.broker_blocked = SampledGauge(
            "orderlane_broker_blocked",
            "1 while the broker blocks publishing (a memory or disk alarm) and orders are refused at once",
            multiprocess_mode="livemax",
            registry=self.registry,
        )
        self.sampled = (self.requests_in_flight, self.waiting_connections, self.incomplete_bodies, self.broker_blocked)
        self.expected_wait = Gauge(
            "orderlane_expected_wait_seconds",
            "How long an order entering this lane now is expected to wait before its handler starts (an estimate: the "
            "backlog ahead of it at the consumers' drain rate; +Inf while orders wait and nothing drains them)",
            ["queue"],
            multiprocess_mode="livemax",
            registry=self.registry,
        )
        self._estimates: WaitEstimates | None = None

    def watch(self, estimates: WaitEstimates) -> None:
        """Show these estimates as `orderlane_expected_wait_seconds`."""
        self._estimates = estimates

    def sample(self) -> None:
        for gauge in self.sampled:
            gauge.sample()
        if self._estimates is not None:
            for lane in self._estimates.lanes:
                seconds = lane.seconds
                if seconds is not None:  # not known yet: no sample rather than a guess
                    self.expected_wait.labels(queue=lane.queue).set(seconds)

    def exposition(self) -> bytes:
        """What `/metrics` answers: this process's metrics, or, with several processes, all of theirs."""
        self.sample()
        return generate_latest(registry_to_scrape(self.registry))

    def sampling(self) -> contextlib.AbstractAsyncContextManager[None]:
        """While the app serves: the gauges shared with the other processes, if there are any (`sharing`)."""
        return sharing(self.sample)


class RequestMetrics:
    """Counts every request by its route template (`/orders`, not the raw path, so the labels stay few)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._counters: dict[tuple[str, str, int], Counter] = {}
        """Each route, method and status's counter, looked up once (methods are the few HTTP knows)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            key = (getattr(scope.get("route"), "path", UNMATCHED), scope["method"], status)
            counter = self._counters.get(key)
            if counter is None:
                route, method, _ = key
                counter = self._counters[key] = self.metrics.requests.labels(route, method, str(status))
            counter.inc()
