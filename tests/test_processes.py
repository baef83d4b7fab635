"""The entry points as users run them: graceful SIGTERM, one-line start-up errors."""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest
from pydantic import AmqpDsn

from broker.connection import Broker
from broker.settings import Settings
from broker.topology import build_topology
from tests.amqp import delete_queues, depth_is, operator_channel, publish_raw, queue_depth, wait_until
from tests.consuming import order_message
from tests.faults import rabbitmqctl, require_rabbitmqctl
from tests.processes import environment, free_port, read_until, run, serving_api, start

PROCESSED = "order processed"


async def test_sigterm_mid_batch_finishes_in_flight_orders_and_loses_none(settings: Settings, broker: Broker) -> None:
    total = 60
    await publish_raw(settings.queue, *(order_message(f"t-{n:03d}") for n in range(total)))
    consumer = await start(
        "consumers",
        "--prefetch",
        "4",
        "--concurrency",
        "1",
        env=environment(settings, ORDERLANE_SIMULATED_WORK_MS="200"),
    )
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            await read_until(consumer, PROCESSED, 6, lines)
            consumer.send_signal(signal.SIGTERM)
            assert consumer.stderr is not None
            lines += (await consumer.stderr.read()).decode().splitlines(keepends=True)
            assert await consumer.wait() == 0
    finally:
        if consumer.returncode is None:
            consumer.kill()
    processed = [line for line in lines if PROCESSED in line]
    still_queued = await queue_depth(settings.queue)
    assert 6 <= len(processed) < total, "SIGTERM should land mid-batch"
    assert len(processed) + still_queued == total, "".join(lines)
    assert len({line.split("order_id=")[1].split()[0] for line in processed}) == len(processed)
    [stopping] = [n for n, line in enumerate(lines) if "stopping: waiting" in line]
    in_flight_at_sigterm = int(lines[stopping].split(" for ")[1].split()[0])
    finished_after_sigterm = sum(PROCESSED in line for line in lines[stopping:])
    assert in_flight_at_sigterm == 1, "".join(lines)
    assert finished_after_sigterm == in_flight_at_sigterm, "the orders in flight at SIGTERM are finished, not dropped"
    [gave_back] = [line for line in lines if "held orders back" in line]
    held_at_sigterm = int(gave_back.split("gave ")[1].split()[0])
    assert 1 <= held_at_sigterm <= 3, "held, unstarted orders go back at once (prefetch 4, one running)"


async def test_topology_conflict_is_one_line_naming_queue_and_argument(settings: Settings) -> None:
    arguments = {**build_topology(settings).lanes[0].work.arguments, "x-max-priority": 5}
    async with operator_channel() as channel:
        await channel.declare_queue(settings.queue, durable=True, arguments=arguments)
    for module in ("consumers", "api"):
        code, stderr = await run(module, env=environment(settings))
        assert code == 1, stderr
        assert "Traceback" not in stderr
        [error] = [line for line in stderr.splitlines() if "error:" in line]
        assert settings.queue in error and "x-max-priority" in error


async def test_unreachable_broker_is_retried_with_backoff_then_a_clear_error(settings: Settings) -> None:
    unreachable = settings.model_copy(update={"amqp_url": "amqp://guest:secret-pw@127.0.0.1:1/", "startup_timeout": 2})
    code, stderr = await run("consumers", env=environment(unreachable))
    assert code == 1
    assert "Traceback" not in stderr
    assert stderr.count("retrying in") >= 2
    assert "no broker answered at amqp://guest:***@127.0.0.1:1/" in stderr
    assert "secret-pw" not in stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [("ORDERLANE_MAX_PRIORITY", "0"), ("ORDERLANE_PREFETCH", "lots")],
)
async def test_invalid_configuration_is_one_line(settings: Settings, variable: str, value: str) -> None:
    code, stderr = await run("consumers", env=environment(settings, **{variable: value}))
    assert code == 1
    assert stderr.strip().splitlines() == [stderr.strip()]
    assert variable in stderr


async def test_handler_that_cannot_be_loaded_is_one_line(settings: Settings) -> None:
    code, stderr = await run("consumers", "--handler", "tests.nowhere:handle", env=environment(settings))
    assert code == 1
    assert "Traceback" not in stderr
    assert "tests.nowhere:handle" in stderr
    await delete_queues(settings.queue)


async def test_curl_path_api_and_consumer_processes_end_to_end(settings: Settings) -> None:
    """What the README's curl lines do: a real uvicorn server, a real consumer, one order through both, followed
    at its Location, then posted again."""
    port = free_port()
    env = environment(settings)
    consumer = await start("consumers", env=env)
    api = await start("api", "--port", str(port), env=env)
    consumer_lines: list[str] = []
    api_lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            await read_until(api, "Uvicorn running", 1, api_lines)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                assert (await client.get("/readyz")).status_code == 200
                order = {"order_id": "curl-1", "priority": 4, "items": ["book"], "user_type": "vip"}
                response = await client.post("/orders", json=order)
                assert response.status_code == 202, response.text
                assert response.json()["priority"] == 0
                await read_until(consumer, "order_id=curl-1", 1, consumer_lines)
                assert "priority=0" in consumer_lines[-1]

                async def followed_to_processed() -> bool:
                    return bool((await client.get(response.headers["location"])).json()["state"] == "processed")

                await wait_until(followed_to_processed, what="the Location says processed")
                again = await client.post("/orders", json=order)
                assert again.status_code == 200 and again.json()["state"] == "processed"
    finally:
        for process in (api, consumer):
            process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        assert (await api.wait(), await consumer.wait()) == (0, 0)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://guest:wrong-pw@127.0.0.1:5672/", "refused the login"),
        ("amqp://guest:guest@127.0.0.1:5672/no-such-vhost", "does the virtual host exist"),
    ],
)
async def test_refusals_fail_at_once_in_one_line(settings: Settings, url: str, expected: str) -> None:
    refused = settings.model_copy(update={"amqp_url": url, "startup_timeout": 30})
    for module in ("consumers", "api"):
        code, stderr = await run(module, env=environment(refused), within=20)
        assert code == 1
        assert "Traceback" not in stderr and "retrying" not in stderr
        assert expected in stderr
        assert "wrong-pw" not in stderr


async def test_sigterm_while_waiting_for_the_broker_exits_cleanly(settings: Settings) -> None:
    unreachable = settings.model_copy(update={"amqp_url": "amqp://guest:guest@127.0.0.1:1/", "startup_timeout": 60})
    for module in ("consumers", "api"):
        process = await start(module, env=environment(unreachable))
        lines: list[str] = []
        async with asyncio.timeout(30):
            await read_until(process, "retrying in", 1, lines)
            process.send_signal(signal.SIGTERM)
            assert process.stderr is not None
            rest = (await process.stderr.read()).decode()
            assert await process.wait() == 0
        assert "Traceback" not in rest
        assert "stopped before it was ready" in rest


async def test_a_handler_that_is_not_callable_is_refused_before_consuming(settings: Settings) -> None:
    code, stderr = await run("consumers", "--handler", "broker.priority:PRIORITIES", env=environment(settings))
    assert code == 1
    assert "handler 'broker.priority:PRIORITIES' is not callable" in stderr
    assert "Traceback" not in stderr


async def test_prefetch_beyond_what_amqp_carries_is_a_usage_error(settings: Settings) -> None:
    code, stderr = await run("consumers", "--prefetch", "70000", env=environment(settings))
    assert code == 2
    assert "1..65535" in stderr


async def test_a_second_signal_stops_without_waiting_and_the_order_comes_back(
    settings: Settings, broker: Broker
) -> None:
    await publish_raw(settings.queue, order_message("long-job"))
    consumer = await start("consumers", env=environment(settings, ORDERLANE_SIMULATED_WORK_MS="600000"))
    lines: list[str] = []
    try:
        async with asyncio.timeout(30):
            await read_until(consumer, "consumer ready", 1, lines)
            await wait_until(lambda: depth_is(settings.queue, 0), what="the order taken")
            consumer.send_signal(signal.SIGTERM)
            await read_until(consumer, "stopping: waiting", 1, lines)
            consumer.send_signal(signal.SIGTERM)
            assert await consumer.wait() == 0
    finally:
        if consumer.returncode is None:
            consumer.kill()
    await wait_until(lambda: depth_is(settings.queue, 1), what="the unfinished order back in the queue")


async def test_failover_urls_are_tried_in_turn_at_start_and_after_a_loss(settings: Settings) -> None:
    ctl = require_rabbitmqctl()
    failover_urls = "amqp://guest:guest@127.0.0.1:5672/,amqp://guest:guest@localhost:5672/"
    dead_first = settings.model_copy(update={"amqp_url": AmqpDsn("amqp://guest:guest@127.0.0.1:1/")})
    env = environment(dead_first, ORDERLANE_AMQP_FAILOVER_URLS=failover_urls)
    consumer = await start("consumers", env=env)
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            await read_until(consumer, "consumer ready", 1, lines)
            assert any("127.0.0.1:1/" in line and "retrying" in line for line in lines)
            await rabbitmqctl(ctl, "close_all_connections", "test: fail over")
            await read_until(consumer, "reconnected to the broker", 1, lines)
    finally:
        consumer.terminate()
        await consumer.wait()
    assert "trying the next broker node" in "".join(lines)


async def send_until_closed(settings: Settings, sent: bytes, **environment_extra: str) -> bytes:
    """Start `python -m api`, send `sent` on one raw connection and nothing more, and return everything the server
    wrote until it closed the connection; the server must then stop cleanly."""
    async with serving_api(settings, **environment_extra) as port, asyncio.timeout(60):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(sent)
        await writer.drain()
        answer = await reader.read()  # returns once the server closes the connection
        writer.close()
    return answer


async def test_a_trickled_body_is_cut_off_by_the_real_server(settings: Settings) -> None:
    """Against uvicorn itself: a client that sends part of its body and waits gets a 408 and a closed connection."""
    body = b'{"order_id": "trickle-1", "items": ["a"]}'
    head = f"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    answer = await send_until_closed(
        settings, head.encode() + b"\r\n\r\n" + body[:10], ORDERLANE_HTTP_BODY_TIMEOUT="0.5"
    )
    assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert b"body_timeout" in answer
    assert await queue_depth(settings.queue) == 0


async def test_an_idle_keep_alive_connection_is_closed_by_the_real_server(settings: Settings) -> None:
    """A client that keeps its connection open after a response and sends nothing more is cut off after
    ORDERLANE_HTTP_KEEP_ALIVE_SECONDS: it does not hold a slot for ever."""
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"  # keep-alive: HTTP/1.1's default
    answer = await send_until_closed(settings, request, ORDERLANE_HTTP_KEEP_ALIVE_SECONDS="1")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
