"""Tracing (broker/tracing.py) on the real broker, with the SDK's in-memory exporter: one trace from the API's request
through the publish to each attempt of the handler, retries and dead letters included; nothing when it is off."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from api.app import create_app
from bench.intake import ORDERLANE_SERVER
from bench.intake import serving_api as bench_serving_api
from broker.cli import tracing_for
from broker.connection import Broker
from broker.errors import ConfigurationError, PermanentFailure
from broker.messages import Order
from broker.publisher import OrderPublisher
from broker.settings import Settings
from broker.tracing import Tracing
from consumers.delivery import Handler
from consumers.runner import Consumer
from tests.amqp import depth_is, drain, lane_queue, wait_until
from tests.http import app_client
from tests.otlp import otlp_collector
from tests.processes import environment, free_port, read_until, run, start

ORDER = {"order_id": "T-1", "priority": 3, "items": ["book"], "user_type": "vip"}


@pytest.fixture
def spans() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider), exporter
    provider.shutdown()


def attempt_of(span: ReadableSpan) -> int:
    attempt = (span.attributes or {})["orderlane.attempt"]
    assert isinstance(attempt, int)
    return attempt


def named(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in finished if span.name == name]


async def post_then_consume(
    settings: Settings,
    broker: Broker,
    tracing: Tracing,
    handler: Handler,
    until: Callable[[], Awaitable[bool] | bool],
    what: str,
) -> None:
    """POST the order to a traced API, then consume it with `handler` until `until` holds."""
    app = create_app(settings, publisher=OrderPublisher(broker, settings, tracing), tracing=tracing)
    async with app_client(app) as client:
        assert (await client.post("/orders", json=ORDER)).status_code == 202
    consumer = Consumer(broker, handler, settings, prefetch=1, concurrency=1, tracing=tracing)
    await consumer.start()
    try:
        await wait_until(until, what=what)
    finally:
        await consumer.stop(grace_seconds=5)


async def test_one_trace_from_the_request_through_the_publish_to_each_attempt_of_the_handler(
    settings: Settings, broker: Broker, spans: tuple[Tracing, InMemorySpanExporter]
) -> None:
    tracing, exporter = spans
    attempts: list[int] = []

    async def fails_once(order: Order) -> None:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            raise RuntimeError("the warehouse did not answer")

    await post_then_consume(
        settings,
        broker,
        tracing,
        fails_once,
        lambda: len(named(exporter.get_finished_spans(), f"process {lane_queue(settings, 0)}")) == 2,
        "both attempts traced",
    )

    finished = exporter.get_finished_spans()
    [request] = named(finished, "POST /orders")
    [publish] = named(finished, f"send {lane_queue(settings, 0)}")
    first, second = sorted(named(finished, f"process {lane_queue(settings, 0)}"), key=attempt_of)
    assert request.kind == SpanKind.SERVER and publish.kind == SpanKind.PRODUCER and first.kind == SpanKind.CONSUMER
    trace_id = request.context.trace_id
    assert {span.context.trace_id for span in (publish, first, second)} == {trace_id}, "one trace"
    assert publish.parent is not None and publish.parent.span_id == request.context.span_id
    assert first.parent is not None and first.parent.span_id == publish.context.span_id
    assert second.parent is not None and second.parent.span_id == publish.context.span_id, "the retry, same trace"
    assert dict(publish.attributes or {}).items() >= {("orderlane.order_id", "T-1"), ("orderlane.priority", 0)}
    assert (attempt_of(first), attempt_of(second)) == (1, 2)
    assert (first.attributes or {})["orderlane.priority"] == 0, "the VIP's effective priority"
    assert (first.attributes or {})["messaging.destination.name"] == lane_queue(settings, 0)
    assert first.status.status_code == StatusCode.ERROR and second.status.status_code == StatusCode.UNSET
    assert [event.name for event in first.events] == ["exception"]


async def test_a_dead_letter_carries_the_orders_trace(
    settings: Settings, broker: Broker, spans: tuple[Tracing, InMemorySpanExporter]
) -> None:
    tracing, exporter = spans

    async def never(order: Order) -> None:
        raise PermanentFailure("no such item")

    await post_then_consume(
        settings, broker, tracing, never, lambda: depth_is(settings.dead_letter_queue, 1), "the order dead-lettered"
    )
    [dead] = await drain(settings.dead_letter_queue)
    [request] = named(exporter.get_finished_spans(), "POST /orders")
    traceparent = dead.headers["traceparent"]
    assert isinstance(traceparent, str)
    assert traceparent.split("-")[1] == format(request.context.trace_id, "032x")


async def test_without_tracing_no_trace_context_is_published(settings: Settings, broker: Broker) -> None:
    async with app_client(create_app(settings, publisher=OrderPublisher(broker, settings))) as client:
        assert (await client.post("/orders", json=ORDER)).status_code == 202
    [message] = await drain(lane_queue(settings, 0))
    assert "traceparent" not in message.headers


def test_tracing_is_off_unless_asked_for_and_named_by_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(variable, raising=False)
    assert tracing_for(Settings(), service="orderlane-api") is None
    switched_on = tracing_for(Settings(tracing=True), service="orderlane-api")
    assert switched_on is not None
    assert switched_on.provider.resource.attributes["service.name"] == "orderlane-api"
    switched_on.provider.shutdown()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "shop-intake")
    by_endpoint = tracing_for(Settings(), service="orderlane-api")
    assert by_endpoint is not None
    assert by_endpoint.provider.resource.attributes["service.name"] == "shop-intake"
    by_endpoint.provider.shutdown()


async def test_the_processes_send_one_trace_to_an_otlp_collector(settings: Settings, broker: Broker) -> None:
    """`python -m api --workers 2` and `python -m consumers`, with nothing but OpenTelemetry's standard variable for
    the endpoint set, send their spans over OTLP/HTTP to a collector (the tests' own, in place of Jaeger or Tempo).
    The spans are still buffered when the processes are stopped (the default batch delay is 5 s): they are sent as
    the processes stop, a worker's too, which SIGTERM ends."""
    with otlp_collector() as (collector, endpoint):
        env = environment(settings, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)
        consumer = await start("consumers", env=env)
        lines: list[str] = []
        try:
            await read_until(consumer, "consumer ready", 1, lines)
            port = free_port()
            async with bench_serving_api(settings, port, (*ORDERLANE_SERVER, "--workers", "2"), env=env):
                async with httpx.AsyncClient() as client:
                    posted = await client.post(f"http://127.0.0.1:{port}/orders", json=ORDER)
                assert posted.status_code == 202
                await read_until(consumer, "order processed", 1, lines)
        finally:
            consumer.terminate()
            await consumer.wait()
        spans = {(span.service, span.name): span for span in collector.received()}
    request = spans["orderlane-api", "POST /orders"]
    publish = spans["orderlane-api", f"send {lane_queue(settings, 0)}"]
    process = spans["orderlane-consumer", f"process {lane_queue(settings, 0)}"]
    assert request.trace_id == publish.trace_id == process.trace_id
    assert (publish.parent_span_id, process.parent_span_id) == (request.span_id, publish.span_id)
    assert process.attributes["orderlane.order_id"] == "T-1"
    assert not [span for span in collector.received() if span.name.startswith("GET /readyz")], "probes untraced"


def test_tracing_asked_for_without_the_otel_extra_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in [name for name in sys.modules if name.split(".")[0] == "opentelemetry"]:
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    monkeypatch.delitem(sys.modules, "broker.tracing")
    with pytest.raises(ConfigurationError, match=r"pip install 'orderlane\[otel\]'"):
        tracing_for(Settings(tracing=True), service="orderlane-api")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")  # set for every process on a host
    assert tracing_for(Settings(), service="orderlane-api") is None, "a warning, not a refusal to start"


async def test_the_api_with_tracing_on_and_no_otel_extra_stops_with_one_line(
    settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['opentelemetry'] = None  # not installed\n")
    env = environment(settings, ORDERLANE_TRACING="true", PYTHONPATH=str(tmp_path))
    code, stderr = await run("api", "--port", str(free_port()), env=env)
    assert code == 3, stderr
    assert "could not build the API: ORDERLANE_TRACING is on, but OpenTelemetry is not installed" in stderr
    assert "Traceback" not in stderr
