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

from api.multiprocess import is_running
from bench.intake import wait_ready
from broker.settings import Settings
from tests.amqp import amqp_url, queue_depth, wait_until
from tests.faults import rabbitmqctl, require_rabbitmqctl
from tests.processes import collect_output, environment, free_port, read_until, run, start

WORKERS = 2
ACCEPTED = "orderlane_orders_accepted_total"
INCOMPLETE_BODIES = "orderlane_http_incomplete_bodies"
FRESH_CONNECTIONS = httpx.Limits(max_keepalive_connections=0)
"""A new connection per request: the kernel hands each to whichever worker accepts first."""


def order(order_id: str) -> dict[str, object]:
    return {"order_id": order_id, "priority": 5, "items": ["tea"], "user_type": "regular"}


def workers_of(parent: int) -> set[int]:
    """The processes uvicorn's supervisor `parent` spawned: its workers (multiprocessing's resource tracker aside)."""
    workers = set()
    for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.add(int(child))
        except FileNotFoundError:  # ended meanwhile
            pass
    return workers


def files(directory: Path, pattern: str) -> list[Path]:
    return list(directory.glob(pattern))


def counted_by(pid: int, metrics_dir: Path, scratch: Path, kind: str, metric: str, **labels: str) -> float:
    """What one worker counted: its own `kind` file (`counter`, `gauge_livesum`), read alone the way /metrics reads
    them all."""
    alone = scratch / f"{kind}-{pid}"
    shutil.rmtree(alone, ignore_errors=True)
    alone.mkdir()
    shutil.copy(metrics_dir / f"{kind}_{pid}.db", alone)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(alone))
    return registry.get_sample_value(metric, labels) or 0.0


def accepted_by(pid: int, metrics_dir: Path, scratch: Path) -> float:
    return counted_by(pid, metrics_dir, scratch, "counter", ACCEPTED, priority="5")


def scraped(text: str, name: str) -> float:
    """A metric's value summed over its samples; a multiprocess gauge whose mode were not a sum would have one
    sample per process (a `pid` label), so the sum would still count each worker's."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


async def scrapes(port: int, count: int) -> list[str]:
    """`count` scrapes of /metrics, each on a new connection, so from either worker."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=FRESH_CONNECTIONS) as client:
        return [(await client.get("/metrics")).text for _ in range(count)]


async def incomplete_bodies_are(port: int, count: int) -> bool:
    """Every one of 10 scrapes, whichever worker answers it, shows `count` requests waiting for their body."""
    return all(scraped(text, INCOMPLETE_BODIES) == count for text in await scrapes(port, 10))


@asynccontextmanager
async def serving_workers(
    settings: Settings, lines: list[str], **environment_extra: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """`python -m api --workers 2` on a free port, its log read into `lines` until both workers have started;
    SIGTERMed on the way out if still running."""
    port = free_port()
    env = environment(settings, **environment_extra)
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
    (metrics_dir / "counter_1.db").write_bytes(b"left by an earlier run")  # python -m api clears the directory
    (metrics_dir / "notes.txt").write_text("not prometheus-client's: left alone")
    lines: list[str] = []
    async with serving_workers(settings, lines, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)) as (api, port):
        log = collect_output(api)
        workers = workers_of(api.pid)
        assert len(workers) == WORKERS
        sent = 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=FRESH_CONNECTIONS) as client:
            # Until both workers have taken some, so that the sums below add two processes' counts.
            while sent < 1000 and not all(accepted_by(pid, metrics_dir, tmp_path) for pid in workers):
                batch = [client.post("/orders", json=order(f"w-{sent + n}")) for n in range(20)]
                assert {response.status_code for response in await asyncio.gather(*batch)} == {202}
                sent += len(batch)
        by_worker = {pid: accepted_by(pid, metrics_dir, tmp_path) for pid in workers}
        assert all(by_worker.values()), f"one worker took every order of {sent}: {by_worker}"
        assert sum(by_worker.values()) == sent
        assert {scraped(text, ACCEPTED) for text in await scrapes(port, 10)} == {sent}, "every scrape counts all"
        assert await queue_depth(settings.queue) == sent
        api.send_signal(signal.SIGTERM)
        assert await api.wait() == 0
    assert not any(is_running(pid) for pid in workers), "every worker stopped"
    stopped = "".join(lines) + (await log).decode()
    assert stopped.count("Finished server process") == WORKERS, stopped
    assert (metrics_dir / "notes.txt").exists()


async def test_without_a_directory_given_the_metrics_live_in_a_temporary_one_removed_at_exit(
    settings: Settings, tmp_path: Path
) -> None:
    lines: list[str] = []
    async with serving_workers(settings, lines, TMPDIR=str(tmp_path)) as (api, port):
        [metrics_dir] = files(tmp_path, "orderlane-metrics-*")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=FRESH_CONNECTIONS) as client:
            posted = await asyncio.gather(*(client.post("/orders", json=order(f"t-{n}")) for n in range(40)))
        assert {response.status_code for response in posted} == {202}
        assert {scraped(text, ACCEPTED) for text in await scrapes(port, 10)} == {40}
        assert {path.name.split("_")[-1] for path in files(metrics_dir, "counter_*.db")} == {
            f"{pid}.db" for pid in workers_of(api.pid)
        }
        api.send_signal(signal.SIGTERM)
        assert await api.wait() == 0
    assert not files(tmp_path, "orderlane-metrics-*")


async def test_sigterm_lets_a_request_in_flight_finish_in_its_worker(settings: Settings, tmp_path: Path) -> None:
    """The body's first bytes are in, so one worker holds a request. Its gauge reaches the files without a scrape
    (each worker samples its own every second), so whichever worker is asked says so. SIGTERM stops both from
    accepting, and the held request still gets 202."""
    body = httpx.Request("POST", "http://x/orders", json=order("in-flight-1")).content
    head = f"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()

    def held_in_the_files() -> float:
        return sum(
            counted_by(pid, metrics_dir, tmp_path, "gauge_livesum", INCOMPLETE_BODIES) for pid in workers_of(api.pid)
        )

    lines: list[str] = []
    async with serving_workers(settings, lines, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)) as (api, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head.encode() + body[:10])
        await writer.drain()
        await wait_until(lambda: held_in_the_files() == 1, what="the held request sampled, nobody scraping")
        assert await incomplete_bodies_are(port, 1)
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
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    lines: list[str] = []
    async with serving_workers(settings, lines, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)) as (api, port):
        log = collect_output(api)
        workers = workers_of(api.pid)
        held = []
        for _ in range(4):  # requests held by the workers, waiting for the rest of their body
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 99\r\n\r\n{"
            )
            await writer.drain()
            held.append(writer)
        await wait_until(lambda: incomplete_bodies_are(port, len(held)), what="every held request counted")
        holding = {pid: counted_by(pid, metrics_dir, tmp_path, "gauge_livesum", INCOMPLETE_BODIES) for pid in workers}
        killed = max(holding, key=holding.__getitem__)
        os.kill(killed, signal.SIGKILL)  # its connections close with it
        await wait_until(lambda: len(workers_of(api.pid) - workers) == 1, what="a new worker in the dead one's place")
        await wait_ready(port, "/readyz", 200)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            posted = await client.post("/orders", json=order("after-a-death"))
        assert posted.status_code == 202
        after = {scraped(text, INCOMPLETE_BODIES) for text in await scrapes(port, 10)}
        assert after == {len(held) - holding[killed]}, f"the killed worker held {holding[killed]}: {after}"
        assert not files(metrics_dir, f"gauge_live*_{killed}.db"), "a scrape drops a killed worker's live gauges"
        assert files(metrics_dir, f"counter_{killed}.db"), "its counts stay: a total never goes down"
        for writer in held:
            writer.close()
    assert "died" in "".join(lines) + (await log).decode()


async def test_workers_stop_when_their_supervisor_is_killed(settings: Settings, tmp_path: Path) -> None:
    lines: list[str] = []
    async with serving_workers(settings, lines, PROMETHEUS_MULTIPROC_DIR=str(tmp_path)) as (api, _):
        workers = workers_of(api.pid)
        api.kill()
        await api.wait()
        await wait_until(lambda: not any(is_running(pid) for pid in workers), what="no orphan worker left serving")


async def test_a_metrics_directory_that_cannot_be_written_is_one_line(settings: Settings, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    env = environment(settings, PROMETHEUS_MULTIPROC_DIR=str(missing))
    code, stderr = await run("api", "--port", str(free_port()), "--workers", str(WORKERS), env=env)
    assert code == 1
    assert stderr.splitlines()[-1] == (
        f"api: error: PROMETHEUS_MULTIPROC_DIR={missing} is not a directory this process may write to"
    )


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
        code, stderr = await run(
            "api", "--port", str(free_port()), "--workers", str(WORKERS), env=environment(on_vhost)
        )
    finally:
        await rabbitmqctl(path, "delete_vhost", vhost)
    assert code == 1, stderr
    assert stderr.splitlines()[-1] == (
        "api: error: an API worker failed to start (its log above says why), so all were stopped"
    )
