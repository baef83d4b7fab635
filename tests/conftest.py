"""Fixtures: the broker the suite runs against, settings with unique queue names, and cleanup."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry

from api.app import create_app
from bench.workload import status_records
from broker.connection import Broker, open_broker
from broker.settings import Settings
from broker.status_store import StatusStore, open_status_store
from scripts.ensure_services import answers, docker_works, redis_answers
from tests.amqp import amqp_url, delete_topology
from tests.http import app_client


@pytest.fixture(scope="session", autouse=True)
def rabbitmq() -> Iterator[str]:
    """The broker at ORDERLANE_AMQP_URL; where none answers and Docker works, a RabbitMQ container."""
    url = amqp_url()
    if asyncio.run(answers(url)):
        yield url
        return
    if not docker_works():
        pytest.exit(
            f"no RabbitMQ answers at {url} and Docker is not available: start one "
            "(`rabbitmq-server -detached`, or `docker compose up -d rabbitmq`) or set ORDERLANE_AMQP_URL",
            returncode=3,
        )
    from testcontainers.rabbitmq import RabbitMqContainer  # only where Docker works

    with RabbitMqContainer("rabbitmq:3.13-management") as container:
        params = container.get_connection_params()
        url = f"amqp://guest:guest@{params.host}:{params.port}/"
        os.environ["ORDERLANE_AMQP_URL"] = url
        yield url


@pytest.fixture(scope="session", autouse=True)
def redis() -> str | None:
    """The status store at ORDERLANE_STATUS_URL (`make test` starts one where it can); empty: the suite runs without."""
    url = Settings().status_url
    if url is not None and not asyncio.run(redis_answers(str(url))):
        pytest.exit(
            f"no Redis answers at {url}: start one (`redis-server --save ''`, or `docker compose up -d redis`), "
            "or set ORDERLANE_STATUS_URL",
            returncode=3,
        )
    return str(url) if url else None


@pytest.fixture
def queue_name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def settings(queue_name: str) -> AsyncIterator[Settings]:
    """Settings on queues of this test's own, deleted afterwards. Retries come back within a second."""
    test_settings = Settings(
        amqp_url=amqp_url(),
        queue=queue_name,
        startup_timeout=10,
        retry_base_seconds=0.05,
        retry_max_seconds=0.5,
        status_ttl=600,
    )
    yield test_settings
    await delete_topology(test_settings)
    await status_records(test_settings, delete=True)  # they would expire after ORDERLANE_STATUS_TTL anyway


@pytest.fixture
async def broker(settings: Settings) -> AsyncIterator[Broker]:
    async with open_broker(settings) as opened:
        yield opened


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[StatusStore]:
    """The status store the settings name, on this test's namespace."""
    async with open_status_store(settings, CollectorRegistry()) as opened:
        assert opened is not None
        yield opened


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API at these settings, in this process (its lifespan run)."""
    async with app_client(create_app(settings)) as http:
        yield http
