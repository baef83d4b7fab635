"""deploy/nginx.conf as shipped, in a real nginx (Debian's) in front of the real API, against the real broker."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker.settings import Settings
from tests.amqp import queue_depth
from tests.proxy import NGINX, Proxy, proxied_api, shipped

RATE_TEST_CONNECTIONS = 8
"""Fewer than the shipped limit_conn (20) at once, so that every 429 in the rate test is the rate's."""


@pytest.fixture
async def proxy(settings: Settings, tmp_path: Path) -> AsyncIterator[Proxy]:
    if not NGINX.exists():
        pytest.fail("nginx is not installed: `make test` installs it as root, else `sudo apt-get install nginx`")
    async with proxied_api(settings, tmp_path) as running:
        yield running


async def test_an_order_posted_over_https_is_published_once(proxy: Proxy, settings: Settings) -> None:
    async with proxy.client() as client:
        response = await client.post("/orders", json={"order_id": "proxied-1", "items": ["book"]})
    assert response.status_code == 202, response.text
    assert await queue_depth(settings.queue) == 1


async def test_a_slowloris_is_closed_after_the_header_timeout(proxy: Proxy, settings: Settings) -> None:
    """A TLS handshake, half a request head, then nothing: nginx closes the connection, and nothing is published."""
    header_timeout = float(shipped("client_header_timeout").removesuffix("s"))
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port, ssl=proxy.tls)
    opened = loop.time()
    try:
        writer.write(b"POST /orders HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
        await writer.drain()
        async with asyncio.timeout(header_timeout + 10):  # generous: the machine is noisy
            assert await reader.read() == b"", "closed without an answer"
    finally:
        writer.close()
        await writer.wait_closed()
    assert loop.time() - opened >= header_timeout - 1, "closed by the header timeout, not at once"
    assert await queue_depth(settings.queue) == 0


async def test_metrics_and_backlog_are_not_served_through_the_proxy_but_health_is(proxy: Proxy) -> None:
    async with proxy.client() as client:
        metrics, backlog = await client.get("/metrics"), await client.get("/queues")
        health = await client.get("/healthz")
    assert (metrics.status_code, backlog.status_code) == (404, 404)
    assert health.status_code == 200


async def test_a_body_over_the_api_limit_is_refused_by_nginx(proxy: Proxy, settings: Settings) -> None:
    limit: int = Settings.model_fields["max_body_bytes"].default
    assert shipped("client_max_body_size") == f"{limit // 1024}k", "nginx's limit is the API's default"
    async with proxy.client() as client:
        response = await client.post(
            "/orders", content=b" " * (limit + 1), headers={"content-type": "application/json"}
        )
    assert response.status_code == 413
    assert proxy.logged("client intended to send too large body") == 1, "nginx's 413, not the API's"
    assert await queue_depth(settings.queue) == 0


async def test_requests_beyond_the_rate_get_429_and_are_not_published(proxy: Proxy, settings: Settings) -> None:
    """Four times the shipped burst at once, from one client: what the burst and the rate let through is published,
    the rest is answered 429 by nginx."""
    limit_req = re.fullmatch(r"zone=\w+ burst=(\d+) nodelay", shipped("limit_req"))
    assert limit_req is not None, "the rate test expects a burst answered without delay"
    orders = [{"order_id": f"rate-{n}", "items": ["book"]} for n in range(4 * int(limit_req[1]))]
    async with proxy.client(connections=RATE_TEST_CONNECTIONS) as client:
        responses = await asyncio.gather(*(client.post("/orders", json=order) for order in orders))
    statuses = Counter(response.status_code for response in responses)
    assert set(statuses) == {202, 429}, statuses
    assert proxy.logged("limiting requests") == statuses[429]
    assert await queue_depth(settings.queue) == statuses[202]
