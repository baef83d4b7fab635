"""The `orderlane` executable: the processes it runs and what it answers about orders and queues (the dead-letter
commands: tests/test_dlq.py)."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
import uvloop

from api.__main__ import main as api_main
from api.app import create_app
from bench.intake import wait_ready
from broker.connection import Broker
from broker.settings import Settings
from consumers.__main__ import main as consumers_main
from tests.amqp import publish_raw, wait_until
from tests.consuming import order_message
from tests.http import app_client
from tests.orderlane import orderlane, start_orderlane
from tests.processes import environment, free_port, start
from tests.recording import RECORD_FILE, recorded


def fields(table: str) -> dict[str, str]:
    """A two-column listing as {name: value}."""
    return dict(re.split(r"\s{2,}", line, maxsplit=1) for line in table.splitlines())


def test_the_consumer_and_the_api_run_on_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both processes that are busy per order get uvloop's event loop (docs/benchmarks.md measures the difference)."""
    loops: list[object] = []

    def run_main(program: str, main: object, loop_factory: object = None) -> int:
        loops.append(loop_factory)
        return 0

    monkeypatch.setattr("consumers.cli.run_main", run_main)
    monkeypatch.setattr("api.__main__.run_main", run_main)
    assert consumers_main([]) == 0
    assert api_main([]) == 0
    assert loops == [uvloop.new_event_loop, uvloop.new_event_loop]


async def test_status_prints_a_known_orders_record(settings: Settings) -> None:
    async with app_client(create_app(settings)) as client:
        posted = await client.post("/orders", json={"order_id": "st-1", "priority": 4, "items": ["x"]})
    assert posted.status_code == 202
    ran = await orderlane("status", "st-1", env=environment(settings))
    assert ran.code == 0, ran.stderr
    shown = fields(ran.stdout)
    assert list(shown)[:2] == ["order_id", "state"]
    assert (shown["order_id"], shown["state"], shown["priority"]) == ("st-1", "accepted", "4")
    assert shown["queue"] == settings.queue
    assert (shown["attempt"], shown["last_error"]) == ("-", "-")
    assert shown["at accepted"].startswith("20") and shown["at accepted"].endswith("+00:00")
    assert ran.stderr == "", "an operator command logs only what went wrong"


async def test_status_of_an_unknown_order_is_one_line_and_exit_1(settings: Settings) -> None:
    ran = await orderlane("status", "never-posted", env=environment(settings))
    assert ran.code == 1
    assert ran.error.startswith("orderlane status: error: no status for order 'never-posted'")
    assert ran.stdout == ""


@pytest.mark.parametrize("url", ["", "redis://127.0.0.1:1/0"], ids=["store off", "store away"])
async def test_status_without_a_store_is_one_line_and_exit_1(settings: Settings, url: str) -> None:
    elsewhere = settings.model_copy(update={"status_url": url or None})
    ran = await orderlane("status", "st-1", env=environment(elsewhere))
    assert ran.code == 1
    assert ran.error.startswith("orderlane status: error: ")
    assert ("ORDERLANE_STATUS_URL is empty" if not url else "the status store did not answer") in ran.error


async def test_queues_prints_the_backlog(settings: Settings, broker: Broker) -> None:
    await publish_raw(settings.queue, *(order_message(f"q-{n}") for n in range(3)))
    ran = await orderlane("queues", env=environment(settings))
    assert ran.code == 0, ran.stderr
    rows = {line.split()[0]: line.split()[1:] for line in ran.stdout.splitlines()[1:]}
    assert rows[settings.queue] == ["3", "0"]
    assert rows[settings.dead_letter_queue] == ["0", "0"]


@pytest.mark.parametrize("form", ["orderlane consume", "python -m consumers"])
async def test_consume_runs_the_handler_orderlane_handler_names(
    settings: Settings, broker: Broker, tmp_path: Path, form: str
) -> None:
    record = tmp_path / "record"
    env = environment(settings, ORDERLANE_HANDLER="tests.recording:record", **{RECORD_FILE: str(record)})
    await publish_raw(settings.queue, order_message("h-1"), order_message("h-2"))
    consumer = await (
        start_orderlane("consume", env=env) if form == "orderlane consume" else start("consumers", env=env)
    )
    try:
        await wait_until(lambda: recorded(record) == {"h-1": 1, "h-2": 1}, what="both orders through the handler")
    finally:
        consumer.send_signal(signal.SIGTERM)
        _, stderr = await consumer.communicate()
    assert consumer.returncode == 0, stderr.decode()


async def test_handler_option_overrides_orderlane_handler(settings: Settings, broker: Broker, tmp_path: Path) -> None:
    record = tmp_path / "record"
    env = environment(settings, ORDERLANE_HANDLER="tests.nowhere:handle", **{RECORD_FILE: str(record)})
    ran = await orderlane("consume", env=env)
    assert ran.code == 1
    assert ran.error.startswith("orderlane consume: error: handler 'tests.nowhere:handle' cannot be loaded")

    await publish_raw(settings.queue, order_message("o-1"))
    consumer = await start_orderlane("consume", "--handler", "tests.recording:record", env=env)
    try:
        await wait_until(lambda: recorded(record) == {"o-1": 1}, what="the order through --handler's handler")
    finally:
        consumer.send_signal(signal.SIGTERM)
        await consumer.communicate()
    assert consumer.returncode == 0


async def test_api_serves_healthz_and_stops_on_sigterm(settings: Settings) -> None:
    port = free_port()
    api = await start_orderlane("api", "--port", str(port), env=environment(settings))
    try:
        await wait_ready(port, "/healthz", 200)
    finally:
        api.send_signal(signal.SIGTERM)
        _, stderr = await api.communicate()
    assert api.returncode == 0, stderr.decode()


async def test_api_options_and_errors_are_the_apis_own(settings: Settings) -> None:
    ran = await orderlane("api", "--help", env=environment(settings))
    assert ran.code == 0
    assert ran.stdout.startswith("usage: orderlane api [-h] [--host HOST] [--port PORT] [--workers WORKERS]")
    bad = await orderlane("api", "--workers", "0", env=environment(settings))
    assert bad.code == 2
    assert bad.stderr.splitlines()[-1] == "orderlane api: error: argument --workers: must be at least 1"
