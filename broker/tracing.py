"""Tracing with OpenTelemetry, optional (the `otel` extra): one trace from the API's request to the consumer's
handler, through the broker.

The API's request span comes from the official ASGI instrumentation (api/tracing.py). The publish and process spans
are made here, after OpenTelemetry's messaging conventions, because the official aio-pika instrumentation does not
fit: it wraps aio-pika's `Exchange.publish`, which the API's publisher bypasses for aiormq's own call (a third of
its cost per order, docs/benchmarks.md), and a consumer's callback, which here only hands the delivery to a handler
slot, so its span would end before the handler starts. The W3C trace context travels in the message's AMQP headers
(`traceparent`); a retry and a dead letter are copies with the same headers, so they stay in the order's trace.

Off unless asked for (`broker.cli.tracing_for` decides; docs/operations.md says how): this module imports
OpenTelemetry, the rest of orderlane imports it only where tracing is on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Final

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from broker.messages import OrderBase
from broker.priority import Priority

MESSAGING_SYSTEM: Final = "rabbitmq"


class Tracing:
    """The tracer both processes make their spans with, and the W3C propagator that carries a trace in AMQP headers."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("orderlane")
        self._propagator = TraceContextTextMapPropagator()

    @contextmanager
    def publishing(self, order: OrderBase, priority: Priority, queue: str) -> Iterator[dict[str, str]]:
        """A producer span for publishing `order`, a child of the current one (the request's); yields the headers
        that carry it to the consumer."""
        attributes: dict[str, AttributeValue] = {
            **_messaging(queue, "send", "publish", order.order_id),
            "orderlane.order_id": order.order_id,
            "orderlane.priority": priority.effective,
        }
        with self.tracer.start_as_current_span(f"send {queue}", kind=SpanKind.PRODUCER, attributes=attributes):
            headers: dict[str, str] = {}
            self._propagator.inject(headers)
            yield headers

    @contextmanager
    def processing(
        self, headers: Mapping[str, object], order: OrderBase, delivery_fields: Mapping[str, int], queue: str
    ) -> Iterator[Span]:
        """A consumer span for one attempt at `order`, in the trace its message's headers carry."""
        carrier = {
            key: value.decode() if isinstance(value, bytes) else value
            for key, value in headers.items()
            if isinstance(value, str | bytes)
        }
        parent = self._propagator.extract(carrier)
        attributes: dict[str, AttributeValue] = {
            **_messaging(queue, "process", "process", order.order_id),
            "orderlane.order_id": order.order_id,
            **{f"orderlane.{name}": value for name, value in delivery_fields.items()},
        }
        with self.tracer.start_as_current_span(
            f"process {queue}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        ) as span:
            yield span

    def flush(self) -> None:
        """Send the spans still buffered: a worker that uvicorn stops with SIGTERM dies by it, before any exit hook."""
        self.provider.force_flush()

    @staticmethod
    def failed(span: Span, failure: Exception) -> None:
        """Mark an attempt's span as failed with what the handler raised (the policy catches it, not the span)."""
        span.record_exception(failure)
        span.set_status(Status(StatusCode.ERROR, type(failure).__name__))


def otlp_tracing(service: str) -> Tracing:
    """Tracing to the OTLP/HTTP endpoint the standard variables name, as this process's tracer provider (so that
    spans a handler or an instrumented library makes go there too); `service` is the service name unless
    OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES gives one."""
    given = os.environ.get("OTEL_SERVICE_NAME") or f"{SERVICE_NAME}=" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    provider = TracerProvider(resource=Resource.create({} if given else {SERVICE_NAME: service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # and sends what is left at exit
    trace.set_tracer_provider(provider)
    return Tracing(provider)


def _messaging(queue: str, operation_type: str, operation: str, message_id: str) -> dict[str, str]:
    """OpenTelemetry's messaging attributes. Orders go through the default exchange, which routes by queue name:
    the queue is the destination a reader looks for, and the routing key."""
    return {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.type": operation_type,
        "messaging.operation.name": operation,
        "messaging.destination.name": queue,
        "messaging.rabbitmq.destination.routing_key": queue,
        "messaging.message.id": message_id,
    }
