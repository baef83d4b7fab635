"""The API's Prometheus metrics, and the pure ASGI middleware that counts requests."""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.priority import PRIORITIES

CONFIRM_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
UNMATCHED: Final = "unmatched"


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "orderlane_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.accepted = Counter(
            "orderlane_orders_accepted",
            "Orders confirmed by the broker, by effective priority",
            ["priority"],
            registry=self.registry,
        )
        self.accepted_by_priority = {priority: self.accepted.labels(priority=str(priority)) for priority in PRIORITIES}
        """Each priority's counter, looked up once: `labels()` per order is a measurable part of the API's CPU."""
        self.publish_seconds = Histogram(
            "orderlane_publish_confirm_seconds",
            "From publish to the broker's confirm",
            buckets=CONFIRM_BUCKETS,
            registry=self.registry,
        )
        self.deduplicated = Counter(
            "orderlane_orders_deduplicated",
            "Posts of an order_id the status store knew: known (200), conflict (409), in_progress (503)",
            ["outcome"],
            registry=self.registry,
        )
        self.without_dedup = Counter(
            "orderlane_orders_without_dedup",
            "Orders published without the duplicate check, because the status store was away",
            registry=self.registry,
        )
        self.overloaded = Counter(
            "orderlane_http_overloaded",
            "Requests answered 503 because ORDERLANE_HTTP_MAX_CONCURRENCY requests were in flight",
            registry=self.registry,
        )
        self.requests_in_flight = Gauge(
            "orderlane_http_requests_in_flight",
            "Requests between their head and their response (limit: ORDERLANE_HTTP_MAX_CONCURRENCY)",
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
        self.waiting_connections = Gauge(
            "orderlane_http_waiting_connections",
            "Connections waiting for a request head: new, idle between requests, or sending it",
            registry=self.registry,
        )
        self.incomplete_bodies = Gauge(
            "orderlane_http_incomplete_bodies", "Requests whose body is not all in yet", registry=self.registry
        )
        self.broker_blocked = Gauge(
            "orderlane_broker_blocked",
            "1 while the broker blocks publishing (a memory or disk alarm) and orders are refused at once",
            registry=self.registry,
        )
        self.broker_errors = Counter(
            "orderlane_broker_errors", "Orders the broker did not take (answered 503)", registry=self.registry
        )


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
