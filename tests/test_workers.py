"""`python -m api --workers N`: processes sharing one port, metrics that count for all of them, a graceful stop."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from bench.intake import wait_ready
from broker.settings import Settings
from tests.amqp import amqp_url, queue_depth, wait_until
from tests.faults import rabbitmqctl, require_rabbitmqctl
from tests.processes import collect_output, environment, free_port, read_until, start

WORKERS = 2
ACCEPTED = "orderlane_orders_accepted_total"


def order(order_id: str) -> dict[str, object]:
    return {"order_id": order_id, "priority": 5, "items": ["tea"], "user_type": "regular"}


def workers_of(parent: int) -> set[int]:
    """The processes uvicorn's supervisor `parent` spawned: its workers (multiprocessing's resource tracker aside)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return {int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()}


def running(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def metric_files(directory: Path, pattern: str) -> list[Path]:
    return list(directory.glob(pattern))


def accepted_by(pid: int, metrics_dir: Path, scratch: Path) -> float:
    """The orders one worker counted: its own counter file, read alone the way /metrics reads them all."""
    alone = scratch / str(pid)
    alone.mkdir(exist_ok=True)
    shutil.copy(metrics_dir / f"counter_{pid}.db", alone)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(alone))
    return registry.get_sample_value(ACCEPTED, {"priority": "5"}) or 0.0


def scraped(text: str, name: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


@asynccontextmanager
async def serving_workers(
    settings: Settings, metrics_dir: Path, lines: list[str]
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """`python -m api --workers 2` on a free port, its metrics in `metrics_dir`, its log read into `lines` until
    both workers have started; SIGTERMed on the way out if still running."""
    port = free_port()
    env = environment(settings, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    api = await start("api", "--port", str(port), "--workers", str(WORKERS), env=env)
    try:
        async with asyncio.timeout(60):
            await read_until(api, "Application startup complete", WORKERS, lines)
            await wait_ready(port, "/readyz", 200)
        yield api, port
    finally:
        if api.returncode is None:
            api.send_signal(signal.SIGTERM)
            await api.wait()


async def test_workers_share_the_port_and_metrics_count_every_order_whichever_answers(
    settings: Settings, tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"left by an earlier run")  # python -m api empties the directory
    lines: list[str] = []
    async with serving_workers(settings, metrics_dir, lines) as (api, port):
        log = collect_output(api)
        workers = workers_of(api.pid)
        assert len(workers) == WORKERS
        # A new connection per request: the kernel hands each to whichever worker accepts first. Until both have
        # taken some, so that the sums below add two processes' counts.
        fresh_connections = httpx.Limits(max_keepalive_connections=0)
        sent = 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=fresh_connections) as client:
            while sent < 1000 and not all(accepted_by(pid, metrics_dir, tmp_path) for pid in workers):
                batch = [client.post("/orders", json=order(f"w-{sent + n}")) for n in range(20)]
                assert {response.status_code for response in await asyncio.gather(*batch)} == {202}
                sent += len(batch)
            by_worker = {pid: accepted_by(pid, metrics_dir, tmp_path) for pid in workers}
            scrapes = [(await client.get("/metrics")).text for _ in range(10)]
        assert all(by_worker.values()), f"one worker took every order of {sent}: {by_worker}"
        assert sum(by_worker.values()) == sent
        assert {scraped(text, ACCEPTED) for text in scrapes} == {sent}, "every scrape counts both workers' orders"
        assert await queue_depth(settings.queue) == sent
        api.send_signal(signal.SIGTERM)
        assert await api.wait() == 0
    assert not any(running(pid) for pid in workers), "every worker stopped"
    stopped = "".join(lines) + (await log).decode()
    assert stopped.count("Finished server process") == WORKERS, stopped


async def test_sigterm_lets_a_request_in_flight_finish_in_its_worker(settings: Settings, tmp_path: Path) -> None:
    body = httpx.Request("POST", "http://x/orders", json=order("in-flight-1")).content
    head = f"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    lines: list[str] = []
    async with serving_workers(settings, tmp_path, lines) as (api, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head.encode() + body[:10])
        await writer.drain()
        api.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await read_until(api, "Shutting down", WORKERS, lines)  # each worker has stopped accepting
        writer.write(body[10:])
        await writer.drain()
        answer = await reader.read()  # to the end: the worker closes the connection after the response
        writer.close()
        assert await api.wait() == 0
    assert answer.startswith(b"HTTP/1.1 202"), answer[:200]
    assert await queue_depth(settings.queue) == 1


async def test_a_worker_that_dies_is_replaced_and_its_gauges_leave_the_sums(settings: Settings, tmp_path: Path) -> None:
    lines: list[str] = []
    async with serving_workers(settings, tmp_path, lines) as (api, port):
        log = collect_output(api)
        workers = workers_of(api.pid)
        killed = min(workers)
        os.kill(killed, signal.SIGKILL)
        await wait_until(lambda: len(workers_of(api.pid) - workers) == 1, what="a new worker in the dead one's place")
        await wait_ready(port, "/readyz", 200)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            posted = await client.post("/orders", json=order("after-a-death"))
            await client.get("/metrics")
        assert posted.status_code == 202
        assert not metric_files(tmp_path, f"gauge_live*_{killed}.db"), "a scrape drops a killed worker's live gauges"
        assert metric_files(tmp_path, f"counter_{killed}.db"), "its counts stay: a total never goes down"
    assert "died" in "".join(lines) + (await log).decode()


async def test_a_worker_that_cannot_start_stops_them_all_with_one_line(settings: Settings) -> None:
    """The broker takes one connection on this virtual host: the start-up check's, closed, then one worker's. The
    other worker cannot connect, and the whole API exits 1 rather than serving with half its workers."""
    path = require_rabbitmqctl()
    vhost = f"orderlane-{uuid.uuid4().hex[:8]}"
    await rabbitmqctl(path, "add_vhost", vhost)
    try:
        await rabbitmqctl(path, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        await rabbitmqctl(path, "set_vhost_limits", "-p", vhost, '{"max-connections": 1}')
        on_vhost = settings.model_copy(update={"amqp_url": f"{amqp_url()}{vhost}", "startup_timeout": 2})
        api = await start("api", "--port", str(free_port()), "--workers", str(WORKERS), env=environment(on_vhost))
        async with asyncio.timeout(60):
            _, stderr = await api.communicate()
    finally:
        await rabbitmqctl(path, "delete_vhost", vhost)
    assert api.returncode == 1, stderr.decode()
    assert stderr.decode().splitlines()[-1] == (
        "api: error: an API worker failed to start (its log above says why), so all were stopped"
    )
