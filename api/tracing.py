"""The API's request spans: OpenTelemetry's own ASGI instrumentation. Imported only when tracing is on (the `otel`
extra is optional); the publish span under each request is the publisher's (broker/tracing.py)."""

from __future__ import annotations

from typing import Any

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from starlette.middleware import Middleware

from broker.tracing import Tracing

ORDER_PATH = "/orders/"
UNTRACED_PATHS = "/healthz,/readyz,/metrics"
"""Probes and scrapes: a steady stream of requests that would bury the orders' traces."""


def request_spans(tracing: Tracing) -> Middleware:
    """The outermost middleware: a server span per request, the trace's root (or a child of the client's
    `traceparent`), in which the publish span is made."""
    return Middleware(
        OpenTelemetryMiddleware,
        tracer_provider=tracing.provider,
        default_span_details=span_details,
        excluded_urls=UNTRACED_PATHS,
        exclude_spans=["receive", "send"],
    )


def span_details(scope: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """`POST /orders`, `GET /orders/{order_id}`: the route's template, not the raw path, so that span names stay
    few."""
    path: str = scope.get("path", "")
    if path.startswith(ORDER_PATH):
        path = ORDER_PATH + "{order_id}"
    return f"{scope.get('method', 'HTTP')} {path}", {}
