"""The API fuzzed with generated requests against the real broker: never a 5xx, nothing published on a 4xx."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.app import create_app
from bench.workload import status_records
from broker.settings import Settings
from tests.amqp import amqp_url, delete_topology, work_depth
from tests.http import app_client

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
order_ids = st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True) | st.text(max_size=70) | json_values
item_lists = (
    st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=3) | st.lists(st.text(max_size=5)) | json_values
)
near_valid_orders = st.fixed_dictionaries(
    {"order_id": order_ids, "items": item_lists},
    optional={"priority": st.integers(-3, 12) | json_values, "user_type": st.sampled_from(["vip", "regular", None])},
)
content_types = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "text/plain", "application/x-www-form-urlencoded", ""]
)
FUZZ = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI does not flake, and a failure reproduces
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


class FuzzedApi:
    """The app with its lifespan (a real broker connection) in a loop of its own, called from sync tests."""

    def __init__(self, runner: asyncio.Runner, client: httpx.AsyncClient) -> None:
        self.runner = runner
        self.client = client
        self.accepted = 0
        self.statuses: set[int] = set()

    def request(self, method: str, content: bytes, content_type: str) -> None:
        response = self.runner.run(
            self.client.request(method, "/orders", content=content, headers={"content-type": content_type})
        )
        assert response.status_code < 500, response.text
        self.statuses.add(response.status_code)
        self.accepted += response.status_code == 202


@pytest.fixture(scope="module")
def api() -> Iterator[FuzzedApi]:
    fuzz_settings = Settings(amqp_url=amqp_url(), queue=f"test-fuzz-{uuid.uuid4().hex[:8]}", max_body_bytes=4096)
    with asyncio.Runner() as runner:
        client_context = app_client(create_app(fuzz_settings))
        fuzzed = FuzzedApi(runner, runner.run(client_context.__aenter__()))
        try:
            yield fuzzed
        finally:
            runner.run(client_context.__aexit__(None, None, None))
        depth = runner.run(work_depth(fuzz_settings))
        runner.run(delete_topology(fuzz_settings))
        runner.run(status_records(fuzz_settings, delete=True))
    assert depth == fuzzed.accepted, "the queues hold a message the API did not answer 202 for"


@FUZZ
@given(body=json_values | near_valid_orders)
def test_generated_json_bodies(api: FuzzedApi, body: Any) -> None:
    api.request("POST", json.dumps(body).encode(), "application/json")  # json: integers of any size


@FUZZ
@given(
    content=st.binary(max_size=300) | st.binary(min_size=4097, max_size=5000),
    content_type=content_types,
    method=st.sampled_from(["POST", "PUT", "GET"]),
)
def test_generated_bytes_and_content_types(api: FuzzedApi, content: bytes, content_type: str, method: str) -> None:
    api.request(method, content, content_type)


def test_the_fuzzing_reached_every_status(api: FuzzedApi) -> None:
    assert {202, 400, 405, 413, 415, 422} <= api.statuses
