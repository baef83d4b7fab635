"""The HTTP contract, through a recording publisher: statuses, bodies, and that nothing is published on errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from api.app import create_app
from broker.settings import Settings
from tests.fakes import RecordingPublisher
from tests.http import app_client

ORDER: dict[str, Any] = {"order_id": "A-1", "priority": 3, "items": ["book"], "user_type": "vip"}


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
async def client(publisher: RecordingPublisher) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(create_app(Settings(max_body_bytes=2048, status_url=None), publisher=publisher)) as http:
        yield http


async def test_accepts_an_order_with_its_effective_and_broker_priority(
    client: httpx.AsyncClient, publisher: RecordingPublisher
) -> None:
    response = await client.post("/orders", json=ORDER)
    assert response.status_code == 202
    assert response.json() == {
        "status": "accepted",
        "order_id": "A-1",
        "priority": 0,
        "broker_priority": 10,
        "queue": "orders",
        "expected_start": None,
    }
    assert [order.order_id for order in publisher.published] == ["A-1"]


async def test_schema_violation_is_422_with_pydantic_details(
    client: httpx.AsyncClient, publisher: RecordingPublisher
) -> None:
    response = await client.post("/orders", json={**ORDER, "priority": 12, "colour": "red"})
    assert response.status_code == 422
    body = response.json()
    assert body["status"] == "error"
    assert {(e["type"], tuple(e["loc"])) for e in body["details"]} == {
        ("less_than_equal", ("priority",)),
        ("extra_forbidden", ("colour",)),
    }
    assert publisher.published == []


@pytest.mark.parametrize(
    ("content", "headers", "status", "error_type"),
    [
        (b'{"order_id": "A-1", ', {"content-type": "application/json"}, 400, "json_invalid"),
        (b"\xff\xfe not utf-8", {"content-type": "application/json"}, 400, "json_invalid"),
        (b"", {"content-type": "application/json"}, 400, "json_invalid"),
        (b'{"order_id": "A-1", "items": ["a"]}', {"content-type": "text/plain"}, 415, "unsupported_media_type"),
        (b'{"order_id": "A-1", "items": ["a"]}', {}, 415, "unsupported_media_type"),
        (b'{"items": ["' + b"a" * 3000 + b'"]}', {"content-type": "application/json"}, 413, "body_too_large"),
        (b"[1, 2]", {"content-type": "application/json"}, 422, "model_type"),
    ],
)
async def test_bad_input_gets_its_status_and_publishes_nothing(
    client: httpx.AsyncClient,
    publisher: RecordingPublisher,
    content: bytes,
    headers: dict[str, str],
    status: int,
    error_type: str,
) -> None:
    response = await client.post("/orders", content=content, headers=headers)
    assert response.status_code == status
    assert response.json()["status"] == "error"
    assert error_type in {detail["type"] for detail in response.json()["details"]}
    assert publisher.published == []


async def test_body_over_the_limit_without_content_length_is_413(
    client: httpx.AsyncClient, publisher: RecordingPublisher
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 512

    response = await client.post("/orders", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert publisher.published == []


async def test_json_with_charset_and_vendor_suffix_are_accepted(client: httpx.AsyncClient) -> None:
    for content_type in ("application/json; charset=utf-8", "application/vnd.orderlane+json"):
        response = await client.post(
            "/orders", content=b'{"order_id": "x", "items": ["a"]}', headers={"content-type": content_type}
        )
        assert response.status_code == 202, content_type


async def test_publish_failure_is_503_with_retry_after(
    client: httpx.AsyncClient, publisher: RecordingPublisher
) -> None:
    publisher.ready = False
    response = await client.post("/orders", json=ORDER)
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["details"][0]["type"] == "broker_unavailable"


async def test_health_and_readiness(client: httpx.AsyncClient, publisher: RecordingPublisher) -> None:
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200
    publisher.ready = False
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 503


async def test_unknown_route_and_method_answer_json(client: httpx.AsyncClient) -> None:
    missing = await client.get("/nope")
    assert (missing.status_code, missing.json()["status"]) == (404, "error")
    wrong_method = await client.get("/orders")
    assert (wrong_method.status_code, wrong_method.json()["status"]) == (405, "error")


async def raw_post(publisher: RecordingPublisher, headers: list[tuple[bytes, bytes]], first: dict[str, Any]) -> int:
    """POST straight through ASGI, where a client can lie about Content-Length or vanish mid-body."""
    app = create_app(Settings(status_url=None), publisher=publisher)
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return first

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/orders",
        "headers": [(b"content-type", b"application/json"), *headers],
        "query_string": b"",
    }
    async with LifespanManager(app) as manager:
        await manager.app(scope, receive, send)
    status: int = sent[0]["status"]
    return status


async def test_client_that_disconnects_mid_body_is_not_a_server_error(publisher: RecordingPublisher) -> None:
    assert await raw_post(publisher, [], {"type": "http.disconnect"}) == 400
    assert publisher.published == []


async def test_declared_content_length_over_the_limit_is_refused_before_reading(publisher: RecordingPublisher) -> None:
    small_body = {"type": "http.request", "body": b'{"order_id": "x", "items": ["a"]}', "more_body": False}
    assert await raw_post(publisher, [(b"content-length", b"999999")], small_body) == 413
    assert publisher.published == []


async def test_integers_beyond_64_bits_are_a_422_not_a_500(client: httpx.AsyncClient) -> None:
    content = b'{"order_id": "x", "items": ["a"], "priority": 123456789012345678901234567890}'
    response = await client.post("/orders", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["details"][0]["type"] == "less_than_equal"


async def test_a_body_that_trickles_past_its_deadline_is_408_and_publishes_nothing(
    publisher: RecordingPublisher,
) -> None:
    async def trickle() -> AsyncIterator[bytes]:
        yield b'{"order_id": "slow", '
        await asyncio.sleep(2)  # far past the deadline below
        yield b'"items": ["a"]}'

    settings = Settings(status_url=None, http_body_timeout=0.2)
    async with app_client(create_app(settings, publisher=publisher)) as client:
        response = await client.post("/orders", content=trickle(), headers={"content-type": "application/json"})
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 408
    assert response.json()["details"][0]["type"] == "body_timeout"
    assert response.headers["connection"] == "close"
    assert publisher.published == []
    assert 'orderlane_http_requests_total{method="POST",route="/orders",status="408"} 1.0' in metrics


async def test_beyond_the_requests_in_flight_a_request_gets_503_at_once_and_liveness_still_answers(
    publisher: RecordingPublisher,
) -> None:
    release = asyncio.Event()
    reading = asyncio.Semaphore(0)

    async def held_body() -> AsyncIterator[bytes]:
        yield b'{"order_id": "held", '
        reading.release()  # the app has asked for the rest of the body: the request is in flight
        await release.wait()
        yield b'"items": ["a"]}'

    settings = Settings(status_url=None, http_max_concurrency=2, http_max_incomplete_bodies=1)
    json_body = {"content-type": "application/json"}
    async with app_client(create_app(settings, publisher=publisher)) as client:
        held = [asyncio.create_task(client.post("/orders", content=held_body(), headers=json_body)) for _ in "ab"]
        for _ in held:
            await reading.acquire()
        refused = await client.post("/orders", json=ORDER)
        alive = await client.get("/healthz")
        release.set()
        answers = await asyncio.gather(*held)
        after = await client.post("/orders", json=ORDER)
        metrics = (await client.get("/metrics")).text
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["details"][0]["type"] == "overloaded"
    assert alive.status_code == 200
    assert [answer.status_code for answer in answers] == [202, 202]
    assert after.status_code == 202
    assert "orderlane_http_overloaded_total 1.0" in metrics
