"""Slow and hostile clients against the real server (`python -m api`) on the real broker: a flood of connections that
send part of a request and then nothing cannot keep a real order out, is closed by the deadlines, and publishes
nothing. Every socket goes to 127.0.0.1, and every flood ends by itself (the server closes each connection)."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from typing import Final

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.flood import HALF_HEAD, TRICKLED_BODY, Flood, Held
from broker.settings import Settings
from tests.amqp import queue_depth, wait_until
from tests.processes import serving_api

FLOOD: Final = 1100
"""More connections than ORDERLANE_HTTP_MAX_CONCURRENCY (1000) at its default."""
DEADLINE: Final = 3.0
"""The header or body deadline of these tests, short so that the suite stays fast; the defaults are 5 s and 10 s."""
SETTLE: Final = 5.0
"""Beyond the deadline, what the issue allows for every flooding connection to be closed."""


def closed_by_reason(metrics: str) -> dict[str, float]:
    closed: defaultdict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "orderlane_http_connections_closed_total":
                closed[sample.labels["reason"]] += sample.value
    return dict(closed)


def gauge(metrics: str, name: str) -> float:
    [value] = (
        sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == name
    )
    return value


async def real_order_during(
    flood: Flood, port: int, order_id: str, settings: Settings
) -> tuple[httpx.Response, list[Held], str]:
    """Post one order once the whole flood is connected and the server has taken it in (the requests of the
    connections it closed as the oldest have ended); return its answer, the flood's connections once the server
    has closed every one, and the API's metrics after that."""
    flooding = asyncio.create_task(flood.run())
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        await flood.all_sent()

        async def taken_in() -> bool:
            in_flight = gauge((await client.get("/metrics")).text, "orderlane_http_requests_in_flight")
            return in_flight <= settings.http_max_incomplete_bodies

        await wait_until(taken_in, within=DEADLINE, what="the flood's closed requests to end")
        posted = await client.post("/orders", json={"order_id": order_id, "items": ["widget"]})
        assert not flooding.done(), "the flood ended before the real order was answered: it proves nothing"
        async with asyncio.timeout(DEADLINE + SETTLE):
            held = await flooding
        metrics = (await client.get("/metrics")).text
    # Nothing left behind: the only connection is the one asking for the metrics, and it is in a request.
    assert "orderlane_http_waiting_connections 0.0" in metrics
    assert "orderlane_http_incomplete_bodies 0.0" in metrics
    return posted, held, metrics


@pytest.mark.parametrize("max_waiting", [None, 512], ids=["default bound", "bound below the flood"])
async def test_half_sent_heads_cannot_keep_a_real_order_out_and_are_closed(
    settings: Settings, max_waiting: int | None
) -> None:
    """At the default bound, the header deadline closes them all; below the flood, the oldest are closed at once."""
    bound = {} if max_waiting is None else {"ORDERLANE_HTTP_MAX_WAITING_CONNECTIONS": str(max_waiting)}
    async with serving_api(settings, ORDERLANE_HTTP_HEADER_TIMEOUT=str(DEADLINE), **bound) as port:
        posted, held, metrics = await real_order_during(
            Flood(port, HALF_HEAD, FLOOD), port, "amid-half-heads", settings
        )
    assert posted.status_code == 202, posted.text
    assert {connection.reply for connection in held} == {b""}, "a half-sent head gets no answer, only a close"
    closed = closed_by_reason(metrics)
    assert sum(closed.values()) == FLOOD
    assert closed.get("too_many_waiting", 0) >= FLOOD - (max_waiting or FLOOD)
    assert closed["header_timeout"] > 0
    assert await queue_depth(settings.queue) == 1  # the real order, and nothing from the flood


async def test_trickled_bodies_cannot_keep_a_real_order_out_and_get_408_at_the_body_deadline(
    settings: Settings,
) -> None:
    """Each trickling request holds a request slot while its body is awaited: bounded below the request slots, they
    can never take all of them (1100 of them would, beyond ORDERLANE_HTTP_MAX_CONCURRENCY)."""
    async with serving_api(settings, ORDERLANE_HTTP_BODY_TIMEOUT=str(DEADLINE)) as port:
        flood = Flood(port, TRICKLED_BODY, FLOOD)
        posted, held, metrics = await real_order_during(flood, port, "amid-trickles", settings)
    assert posted.status_code == 202, posted.text
    answers = Counter(connection.status for connection in held)
    # Cut off at the deadline, or closed as the oldest waiting; or, while the server was taking the flood in and
    # the requests of the connections it had closed had not ended yet, refused at once as `overloaded`.
    assert answers[408] > 0 and set(answers) <= {408, None, 503}, answers
    assert all(b"overloaded" in connection.reply for connection in held if connection.status == 503)
    # Each connection is closed as the oldest unless it ended first, while the server was still taking the flood in:
    # until its last such close, which on a slow machine comes well after the client has sent everything. The first
    # tricklers can reach their deadline before the last ones are taken in: each of those ends the wait of one, and
    # frees one place.
    assert flood.all_sent_at is not None
    taking_in_until = max((c.closed_at for c in held if c.status is None), default=flood.all_sent_at)
    ended_while_taking_in = sum(c.status is not None and c.closed_at < taking_in_until for c in held)
    bound = settings.http_max_incomplete_bodies
    assert answers[None] == closed_by_reason(metrics)["too_many_bodies"] >= FLOOD - bound - ended_while_taking_in
    assert f'orderlane_http_requests_total{{method="POST",route="/orders",status="408"}} {answers[408]}.0' in metrics
    assert await queue_depth(settings.queue) == 1


async def answered_then(port: int, first: bytes, then: bytes) -> bytes:
    """Send `first`, wait for the head of its answer, send `then`; return all the server wrote until it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(first)
        answer = await reader.readuntil(b"\r\n\r\n")
        writer.write(then)
        async with asyncio.timeout(DEADLINE + SETTLE):
            return answer + await reader.read()
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("first", "then"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789", b"more of the body"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"\r\n"),
    ],
    ids=["the rest of a body the app did not read", "a stray CRLF"],
)
async def test_bytes_after_a_response_that_begin_no_head_are_cut_off_by_the_header_deadline(
    settings: Settings, first: bytes, then: bytes
) -> None:
    """Any byte stops uvicorn's keep-alive timer and only a complete head starts it again: without a deadline from
    the first byte after a response, such a connection would be kept for ever."""
    async with serving_api(settings, ORDERLANE_HTTP_HEADER_TIMEOUT=str(DEADLINE)) as port:
        answer = await answered_then(port, first, then)
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    assert closed_by_reason(metrics) == {"header_timeout": 1.0}


async def test_a_pipelined_request_waiting_for_its_body_is_bounded_as_one(settings: Settings) -> None:
    """A body-less POST head sent behind another request is started once that one is answered: it waits for its
    body like any other (counted, and bounded by ORDERLANE_HTTP_MAX_INCOMPLETE_BODIES), then gets its 408."""
    post = b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    pipelined = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + post
    async with serving_api(settings, ORDERLANE_HTTP_BODY_TIMEOUT=str(DEADLINE)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(pipelined)
            first = await reader.readuntil(b"\r\n\r\n")
            async with httpx.AsyncClient() as client:
                metrics = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            async with asyncio.timeout(DEADLINE + SETTLE):
                rest = await reader.read()
        finally:
            writer.close()
    assert first.startswith(b"HTTP/1.1 200")
    assert "orderlane_http_incomplete_bodies 1.0" in metrics
    assert b"HTTP/1.1 408" in rest
    assert await queue_depth(settings.queue) == 0
