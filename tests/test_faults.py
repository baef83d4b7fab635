"""Faults caused on purpose, against the real broker and the real processes: nothing a 202 promised is lost."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from api.app import create_app
from bench.alarm import memory_alarm
from broker.connection import Broker
from broker.settings import Settings
from tests.amqp import drain, drained, publish_raw, queue_depth, wait_until
from tests.consuming import order_message
from tests.faults import ensure_broker_app_running, require_rabbitmqctl, restart_broker_app
from tests.http import app_client
from tests.processes import collect_output, environment, free_port, read_until, start
from tests.recording import RECORD_FILE, recorded, redelivered

STREAM_SIZE = 2000
STREAM_RATE = 250  # orders per second
RETRY_PAUSE = 0.2


@dataclass
class StreamReport:
    accepted: set[str] = field(default_factory=set)
    halfway: asyncio.Event = field(default_factory=asyncio.Event)
    unavailable: int = 0
    known: int = 0


async def post_until_accepted(client: httpx.AsyncClient, order_id: str, report: StreamReport) -> None:
    """A well-behaved client: on 503 (or a dropped request) it waits and tries again."""
    body = {"order_id": order_id, "priority": hash(order_id) % 10, "items": ["x"]}
    while True:
        try:
            response = await client.post("/orders", json=body)
        except httpx.TransportError:
            await asyncio.sleep(RETRY_PAUSE)
            continue
        if response.status_code in (200, 202):  # 200: an earlier try was stored after all (the status store knows)
            report.known += response.status_code == 200
            report.accepted.add(order_id)
            if len(report.accepted) == STREAM_SIZE // 2:
                report.halfway.set()
            return
        assert response.status_code == 503, response.text
        report.unavailable += 1
        await asyncio.sleep(min(float(response.headers["retry-after"]), RETRY_PAUSE))


async def steady_stream(client: httpx.AsyncClient, report: StreamReport) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    for n in range(STREAM_SIZE):
        await asyncio.sleep(max(0.0, started + n / STREAM_RATE - loop.time()))
        await post_until_accepted(client, f"s-{n:05d}", report)


async def test_broker_restart_during_a_steady_stream(settings: Settings, broker: Broker, tmp_path: Path) -> None:
    ctl = require_rabbitmqctl()
    record_file = tmp_path / "processed.log"
    env = environment(
        settings,
        **{RECORD_FILE: str(record_file)},
        ORDERLANE_PUBLISH_TIMEOUT="2",
        ORDERLANE_SIMULATED_WORK_MS="20",  # so that handlers are in flight when the connection drops
    )
    await broker.connection.close()  # the fixture only declared the queues; the processes bring their own
    port = free_port()
    api = await start("api", "--port", str(port), env=env)
    consumer = await start("consumers", "--handler", "tests.recording:record", env=env)
    report = StreamReport()
    try:
        await read_until(api, "Uvicorn running", 1, [])
        logs = {"api": collect_output(api), "consumer": collect_output(consumer)}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            stream = asyncio.create_task(steady_stream(client, report))
            async with asyncio.timeout(240):
                await report.halfway.wait()

                async def not_ready() -> None:
                    async def answers_503() -> bool:
                        return (await client.get("/readyz")).status_code == 503

                    await wait_until(answers_503, what="/readyz 503 while the broker is down")

                await restart_broker_app(ctl, down_seconds=3, while_down=not_ready)
                await stream
                assert (await client.get("/readyz")).status_code == 200

        async def all_processed() -> bool:
            return report.accepted <= set(recorded(record_file))

        await wait_until(all_processed, within=120, what="every accepted order processed")
        assert consumer.returncode is None, "the consumer must resume by itself, not exit"
    finally:
        await ensure_broker_app_running(ctl)
        for process in (api, consumer):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(60):
        exit_codes = (await api.wait(), await consumer.wait())
    consumer_log = (await logs["consumer"]).decode()
    assert exit_codes == (0, 0), consumer_log[-3000:]

    counts = recorded(record_file)
    lost = report.accepted - set(counts)
    duplicated = sum(n - 1 for n in counts.values())
    print(
        f"\nbroker restart: accepted={len(report.accepted)} processed={len(counts)} "
        f"duplicated={duplicated} lost={len(lost)} redelivered={redelivered(record_file)} "
        f"(503s during the outage: {report.unavailable}; retries answered 200 from the status store: {report.known})"
    )
    assert len(report.accepted) == STREAM_SIZE
    assert lost == set()
    assert report.unavailable > 0, "the outage should have been seen by the API"


async def test_consumer_killed_mid_batch_its_orders_go_to_another(
    settings: Settings, broker: Broker, tmp_path: Path
) -> None:
    total = 300
    await publish_raw(settings.queue, *(order_message(f"k-{n:04d}") for n in range(total)))
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    slow = {"ORDERLANE_SIMULATED_WORK_MS": "20"}
    first = await start(
        "consumers",
        "--handler",
        "tests.recording:record",
        "--prefetch",
        "20",
        env=environment(settings, **{RECORD_FILE: str(first_log)}, **slow),
    )

    async def first_is_mid_batch() -> bool:
        return sum(recorded(first_log).values()) >= 40

    await wait_until(first_is_mid_batch, within=60, what="the first consumer at work")
    first.kill()
    await first.wait()
    second = await start(
        "consumers",
        "--handler",
        "tests.recording:record",
        env=environment(settings, **{RECORD_FILE: str(second_log)}),
    )

    async def all_processed() -> bool:
        return len(recorded(first_log, second_log)) == total

    try:
        await wait_until(all_processed, within=60, what="every order processed by one of the two")
        await wait_until(lambda: drained(settings), within=30, what="every order acked")
    finally:
        second.send_signal(signal.SIGTERM)
        assert await second.wait() == 0
    killed_in_flight = redelivered(second_log)
    print(f"\nSIGKILL: processed={total} redelivered to the second consumer={killed_in_flight}")
    assert killed_in_flight >= 1, "the killed consumer's unacked orders come back marked redelivered"


async def test_a_memory_alarm_is_answered_503_at_once_not_after_the_publish_timeout(settings: Settings) -> None:
    """While the broker blocks publishing, aiormq holds every publish until the alarm clears: each POST would wait
    out ORDERLANE_PUBLISH_TIMEOUT. The broker tells a connection that it is blocked as it blocks it, on its next
    publish: that first order is answered 503 `broker_blocked` as soon as the frame arrives, its status left
    `unconfirmed` (it may still be stored when the alarm clears); from then on the API answers 503 without trying,
    says so in /readyz and its metrics, and takes orders again once the alarm lifts, with no restart."""
    ctl = require_rabbitmqctl()
    patient = Settings.model_validate({**settings.model_dump(), "publish_timeout": 8})

    async def readiness(client: httpx.AsyncClient) -> str:
        answer = (await client.get("/readyz")).json()
        return "ready" if answer["status"] == "ready" else answer["details"][0]["type"]

    async with app_client(create_app(patient)) as client:
        assert (await client.post("/orders", json={"order_id": "before", "items": ["a"]})).status_code == 202
        async with memory_alarm(ctl):
            async with asyncio.timeout(patient.publish_timeout / 2):  # not the confirm's timeout: the frame's news
                first = await client.post("/orders", json={"order_id": "first", "items": ["a"]})
            assert await readiness(client) == "broker_blocked"
            first_status = (await client.get("/orders/first")).json()["state"]
            async with asyncio.timeout(patient.publish_timeout / 2):  # a publish tried would wait all 8 s
                refused = await client.post("/orders", json={"order_id": "during", "items": ["a"]})
            metrics = (await client.get("/metrics")).text
        await wait_until(lambda: _is(readiness(client), "ready"), within=30, what="the alarm to lift")
        after = await client.post("/orders", json={"order_id": "after", "items": ["a"]})
    assert first.status_code == 503
    assert first.json()["details"][0]["type"] == "broker_blocked"
    assert first_status == "unconfirmed"  # it may still be stored when the alarm clears: a retry is checked
    assert refused.status_code == 503
    assert refused.json()["details"][0]["type"] == "broker_blocked"
    assert "retry-after" in refused.headers
    assert "orderlane_broker_blocked 1.0" in metrics
    assert after.status_code == 202
    assert await queue_depth(settings.queue) in (2, 3)  # before, after, and maybe first; never the refused one
    assert "during" not in {message.message_id for message in await drain(settings.queue)}


async def _is(value: Awaitable[str], expected: str) -> bool:
    return await value == expected
