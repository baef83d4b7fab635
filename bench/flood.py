"""Flood: intake beside hostile clients, orderlane's server against plain uvicorn (as `python -m api` was before its
connection guard) and, where it is installed, granian, in the same run. The hostile clients are connections that
send part of a request and then nothing, to 127.0.0.1 only; the flood tests use them too.

- `HALF_HEAD`: half a request head (slowloris).
- `TRICKLED_BODY`: a whole head announcing a body, and the body's first bytes.

Per server and round: wrk (bench/intake.py) for `seconds` alone; then, beside a flood that keeps 1,100 half-sent
heads open (each opened again as soon as the server closes it), how long a real order waits for its 202, and wrk
again. The rate under the flood against the rate without is the measure.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import httpx

from bench.intake import ORDERLANE_SERVER, Throughput, run_wrk, serving_api
from bench.workload import bench_settings, delete_queues
from broker.connection import open_broker

HALF_HEAD: Final = b"POST /orders HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl"
TRICKLED_BODY: Final = (
    b"POST /orders HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n"
    b'{"order_id": "flood-'
)


@dataclass(frozen=True, slots=True)
class Held:
    """One hostile connection: what the server answered before closing it (b"" if nothing), and when."""

    reply: bytes
    closed_after: float
    closed_at: float
    """time.perf_counter() when the server closed it."""

    @property
    def status(self) -> int | None:
        """The status code of the answer, if the server sent one."""
        return int(self.reply.split(b" ", 2)[1]) if self.reply.startswith(b"HTTP/1.1 ") else None


async def hold(port: int, payload: bytes, sent: asyncio.Semaphore | None = None) -> Held:
    """Connect, send `payload` (then release `sent`), and wait for the server to close the connection."""
    began = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        if sent is not None:
            sent.release()
        reply = b""
        with contextlib.suppress(ConnectionError):  # a reset is a close too
            reply = await reader.read()
        closed_at = time.perf_counter()
        return Held(reply, closed_at - began, closed_at)
    finally:
        writer.close()


class Flood:
    """`connections` opened at once, each sending `payload`; `run()` returns once the server has closed every one."""

    def __init__(self, port: int, payload: bytes, connections: int) -> None:
        self.port = port
        self.payload = payload
        self.connections = connections
        self._sent = asyncio.Semaphore(0)
        self.all_sent_at: float | None = None
        """time.perf_counter() once every connection had sent its payload (`all_sent`)."""

    async def run(self) -> list[Held]:
        return await asyncio.gather(*(hold(self.port, self.payload, self._sent) for _ in range(self.connections)))

    async def all_sent(self) -> None:
        """Return once every connection is open and has sent its payload."""
        for _ in range(self.connections):
            await self._sent.acquire()
        self.all_sent_at = time.perf_counter()


async def sustained_flood(
    port: int, payload: bytes, connections: int, stop: asyncio.Event, sent: asyncio.Semaphore
) -> int:
    """Keep `connections` open, each opened again as soon as the server closes it, until `stop`; release `sent` for
    each connection that has sent its payload; return how many were opened in all."""
    opened = 0

    async def keep_one() -> None:
        nonlocal opened
        while not stop.is_set():
            opened += 1
            try:
                await hold(port, payload, sent)
            except OSError:  # refused: the server is not there (yet, or any more)
                await asyncio.sleep(0.1)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(keep_one()) for _ in range(connections)]
        await stop.wait()
        for task in tasks:
            task.cancel()
    return opened


PLAIN_UVICORN: Final = ("-m", "bench.plain_server", "--port", "{port}")
GRANIAN: Final = (
    *("-m", "granian", "--interface", "asgi", "--factory", "--port", "{port}", "--no-ws", "--log-level", "error"),
    *("--http1-header-read-timeout", "5000", "api.app:create_app"),
)
"""The same app under granian (Rust), which has a header-read timeout of its own, here ORDERLANE_HTTP_HEADER_TIMEOUT's
default: the other way to get one. Run only where granian is installed (`pip install granian`); not a dependency."""


def servers() -> dict[str, Sequence[str]]:
    """orderlane's server and the baselines: plain uvicorn always, granian where it is installed."""
    found: dict[str, Sequence[str]] = {"orderlane (python -m api)": ORDERLANE_SERVER}
    found["plain uvicorn, as before"] = PLAIN_UVICORN
    if importlib.util.find_spec("granian") is not None:
        found["granian, header read timeout 5 s"] = GRANIAN
    return found


FLOOD_CONNECTIONS: Final = 1100
CLIENTS: Final = 32
PORT: Final = 8768


@dataclass(frozen=True, slots=True)
class FloodRun:
    """One server, one round: wrk alone, then wrk beside a sustained flood of half-sent heads."""

    normal: Throughput
    flooded: Throughput
    seconds: float
    first_order_seconds: float | None
    """From the flood being fully connected to a real POST answered 202; None: not within `seconds`."""
    flood_opened: int

    @property
    def flooded_accepted_per_second(self) -> float:
        """Under the flood, only the 2xx count: plain uvicorn answers 503 quickly (wrk's rate counts every answer)."""
        return max(0.0, self.flooded.per_second - self.flooded.errors / self.seconds)


@dataclass(frozen=True, slots=True)
class FloodResult:
    server: str
    runs: tuple[FloodRun, ...]

    @property
    def normal_per_second(self) -> float:
        return statistics.median(run.normal.per_second for run in self.runs)

    @property
    def flooded_per_second(self) -> float:
        return statistics.median(run.flooded_accepted_per_second for run in self.runs)

    @property
    def ratio(self) -> float:
        return self.flooded_per_second / self.normal_per_second

    @property
    def first_order_seconds(self) -> float | None:
        """The median wait for the first 202 under the flood; None if most rounds had none."""
        waits = sorted(run.first_order_seconds or float("inf") for run in self.runs)
        middle = waits[len(waits) // 2]
        return None if middle == float("inf") else middle


async def first_order(port: int, within: float) -> float | None:
    """Seconds until a new order is answered 202, posting a new one on any other outcome; None if not `within`."""
    began = time.perf_counter()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=within) as client:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                for attempt in itertools.count():
                    order = {"order_id": f"first-{attempt}", "items": ["widget"]}
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.post("/orders", json=order)).status_code == 202:
                            return time.perf_counter() - began
                    await asyncio.sleep(0.05)
    return None


async def flood_run(server: Sequence[str], seconds: float) -> FloodRun:
    """On a queue of its own each time, so that every order_id is new to the status store."""
    settings = bench_settings()
    try:
        async with open_broker(settings):
            pass
        async with serving_api(settings, PORT, server):
            normal = await run_wrk(CLIENTS, seconds, PORT)
        await delete_queues(settings)
        async with open_broker(settings):
            pass
        async with serving_api(settings, PORT, server):
            stop, sent = asyncio.Event(), asyncio.Semaphore(0)
            flooding = asyncio.create_task(sustained_flood(PORT, HALF_HEAD, FLOOD_CONNECTIONS, stop, sent))
            for _ in range(FLOOD_CONNECTIONS):
                await sent.acquire()
            first = await first_order(PORT, within=seconds)
            flooded = await run_wrk(CLIENTS, seconds, PORT)
            stop.set()
            opened = await flooding
    finally:
        await delete_queues(settings)
    return FloodRun(normal, flooded, seconds, first, opened)


async def measure_flood(seconds: float, rounds: int, progress: Callable[[], object]) -> list[FloodResult]:
    """Each server in turn per round, which one goes first swapping from one round to the next."""
    compared = servers()
    runs: dict[str, list[FloodRun]] = {name: [] for name in compared}
    for round_number in range(rounds):
        order = list(compared.items())
        for name, server in order if round_number % 2 == 0 else reversed(order):
            runs[name].append(await flood_run(server, seconds))
            progress()
    return [FloodResult(name, tuple(found)) for name, found in runs.items()]
