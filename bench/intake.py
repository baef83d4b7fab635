"""Intake: `POST /orders` under wrk (C, over loopback), beside a raw aio-pika publisher with confirms at the same
concurrency, in the same run.

wrk rather than a Python client: on a 2-core machine shared with the broker and the API, the load generator must
cost as little CPU as possible, or it measures itself. wrk is one C process, from Debian's packages.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx

from bench.workload import bench_channel, bench_settings, delete_queues, environment, orders
from broker.connection import open_broker
from broker.priority import prioritize
from broker.publisher import build_message
from broker.settings import Settings

POST_SCRIPT = Path(__file__).with_name("post.lua")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
ORDERLANE_SERVER: Final = ("-m", "api", "--port", "{port}")


@dataclass(frozen=True, slots=True)
class Throughput:
    per_second: float
    p50_ms: float
    p99_ms: float
    errors: int = 0
    requests: int = 0
    """All that were answered (wrk); 0 where not counted."""


@dataclass(frozen=True, slots=True)
class IntakeResult:
    concurrency: int
    api: Throughput
    raw: Throughput

    @property
    def ratio(self) -> float:
        return self.api.per_second / self.raw.per_second


def require_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("bench: the intake scenario needs wrk (Debian/Ubuntu: apt-get install wrk)")
    return wrk


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip()).groups()  # type: ignore[union-attr]
    return float(number) * _UNIT_MS[unit]


def parse_wrk(output: str) -> Throughput:
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    timeouts = re.search(r"Socket errors:.*?(\d+) timeout", output)
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (int(timeouts.group(1)) if timeouts else 0)
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    return Throughput(rate, p50, p99, errors, requests)


async def api_intake(settings: Settings, concurrency: int, seconds: float, port: int) -> Throughput:
    async with serving_api(settings, port):
        return await run_wrk(concurrency, seconds, port)


@asynccontextmanager
async def serving_api(
    settings: Settings,
    port: int,
    server: Sequence[str] = ORDERLANE_SERVER,
    env: Mapping[str, str] | None = None,
    ready: tuple[str, int] = ("/readyz", 200),
) -> AsyncIterator[asyncio.subprocess.Process]:
    """The API served by `server` (arguments to python, `{port}` replaced) on `port`, on the settings' queue and
    status store (or in `env`), from `ready` (a GET of that path answered with that status) until SIGTERM; it has
    exited when this returns."""
    api = await asyncio.create_subprocess_exec(
        sys.executable,
        *(argument.format(port=port) for argument in server),
        cwd=PROJECT_ROOT,
        env=env if env is not None else environment(settings),
        stdout=asyncio.subprocess.DEVNULL,  # granian logs there
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_ready(port, *ready)
        yield api
    finally:
        api.send_signal(signal.SIGTERM)
        await api.wait()


async def run_wrk(concurrency: int, seconds: float, port: int) -> Throughput:
    """wrk posting a new order on every request (post.lua) to the API on `port`."""
    wrk = await asyncio.create_subprocess_exec(
        require_wrk(),
        "-t1",
        f"-c{concurrency}",
        f"-d{seconds:g}s",
        "--latency",
        "-s",
        str(POST_SCRIPT),
        f"http://127.0.0.1:{port}",
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await wrk.communicate()
    return parse_wrk(output.decode())


async def wait_ready(port: int, path: str = "/readyz", status: int = 200) -> None:
    async with httpx.AsyncClient() as client, asyncio.timeout(60):
        while True:
            try:
                if (await client.get(f"http://127.0.0.1:{port}{path}")).status_code == status:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)


async def raw_publish(settings: Settings, concurrency: int, seconds: float) -> Throughput:
    """`concurrency` publishers on one confirm channel, each awaiting its confirm before the next, for `seconds`."""
    latencies: list[float] = []
    template = orders(1)[0]
    message_priority = prioritize(template, vip_priority=0, max_priority=settings.max_priority)
    async with bench_channel(settings) as channel:
        deadline = time.perf_counter() + seconds

        async def publisher() -> None:
            while (started := time.perf_counter()) < deadline:
                message = build_message(template, message_priority)
                await channel.default_exchange.publish(message, routing_key=settings.queue)
                latencies.append((time.perf_counter() - started) * 1000)

        began = time.perf_counter()
        await asyncio.gather(*(publisher() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return Throughput(len(latencies) / elapsed, cuts[49], cuts[98])


async def measure_intake(concurrency: int, seconds: float, port: int) -> IntakeResult:
    settings = bench_settings()
    try:
        async with open_broker(settings):
            pass
        api = await api_intake(settings, concurrency, seconds, port)
        raw = await raw_publish(settings, concurrency, seconds)
    finally:
        await delete_queues(settings)
    return IntakeResult(concurrency, api, raw)
