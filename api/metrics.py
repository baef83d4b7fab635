"""The API's Prometheus metrics, and the pure ASGI middleware that counts requests.

With several API processes on one port (`python -m api --workers N`), a scrape reaches one of them, which must
answer for all: prometheus-client's multiprocess mode, where every process writes its values to files in one
directory (`PROMETHEUS_MULTIPROC_DIR`) and the one scraped reads them all. It is the library's own answer, used the
same way under gunicorn, and needs no process of its own; the alternatives (a scrape target per process, or a push
gateway) would put the workers in the user's Prometheus configuration. Its limit: a gauge is only what a process
`set`, so gauges read from a function (`set_function`) are sampled into their values instead (`SampledGauge`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.intake import IntakeMetrics

UNMATCHED: Final = "unmatched"
MULTIPROCESS_DIRECTORY: Final = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client's switch: set before it is first imported, its values live in files in this directory."""
GAUGE_SAMPLE_SECONDS: Final = 1.0
"""With several processes, how often each one writes its sampled gauges for whichever is scraped."""
METRIC_FILE: Final = re.compile(r"(?:counter|histogram|summary|gauge_[a-z]+)_(\d+)\.db")
"""A file prometheus-client writes in multiprocess mode: one per metric type (and gauge mode) and process id."""


def multiprocess_directory() -> Path | None:
    """The directory every API process writes its metrics to, if there are several."""
    directory = os.environ.get(MULTIPROCESS_DIRECTORY)
    return Path(directory) if directory else None


class SampledGauge(Gauge):
    """A gauge read from its source when sampled: `set_function`, except that in multiprocess mode the value reaches
    the other processes, which only see what was `set`."""

    def _metric_init(self) -> None:
        super()._metric_init()
        self._source: Callable[[], float] | None = None

    def read_from(self, source: Callable[[], float]) -> None:
        self._source = source

    def sample(self) -> None:
        if self._source is not None:
            self.set(self._source())


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "orderlane_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.intake = IntakeMetrics(self.registry)
        self.overloaded = Counter(
            "orderlane_http_overloaded",
            "Requests answered 503 because ORDERLANE_HTTP_MAX_CONCURRENCY requests were in flight",
            registry=self.registry,
        )
        self.requests_in_flight = SampledGauge(
            "orderlane_http_requests_in_flight",
            "Requests between their head and their response (limit: ORDERLANE_HTTP_MAX_CONCURRENCY)",
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "orderlane_http_rate_limited",
            "Requests answered 429 because their API key (its position in ORDERLANE_API_KEYS) was over its rate",
            ["key"],
            registry=self.registry,
        )
        self.connections_closed = Counter(
            "orderlane_http_connections_closed",
            "Connections the API closed before a whole request: header_timeout; too_many_waiting or too_many_bodies "
            "(the oldest, beyond ORDERLANE_HTTP_MAX_WAITING_CONNECTIONS or ORDERLANE_HTTP_MAX_INCOMPLETE_BODIES)",
            ["reason"],
            registry=self.registry,
        )
        self.waiting_connections = SampledGauge(
            "orderlane_http_waiting_connections",
            "Connections waiting for a request head: new, idle between requests, or sending it",
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.incomplete_bodies = SampledGauge(
            "orderlane_http_incomplete_bodies",
            "Requests whose body is not all in yet",
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.broker_blocked = SampledGauge(
            "orderlane_broker_blocked",
            "1 while the broker blocks publishing (a memory or disk alarm) and orders are refused at once",
            multiprocess_mode="livemax",
            registry=self.registry,
        )
        self.sampled = (self.requests_in_flight, self.waiting_connections, self.incomplete_bodies, self.broker_blocked)

    def sample(self) -> None:
        for gauge in self.sampled:
            gauge.sample()

    def exposition(self) -> bytes:
        """What `/metrics` answers: this process's metrics, or, with several processes, all of theirs."""
        self.sample()
        directory = multiprocess_directory()
        if directory is None:
            return generate_latest(self.registry)
        forget_dead_processes(directory)
        every_process = CollectorRegistry()
        MultiProcessCollector(every_process, path=str(directory))
        return generate_latest(every_process)

    @contextlib.asynccontextmanager
    async def sampling(self) -> AsyncIterator[None]:
        """While the app serves: with several processes, sample the gauges every GAUGE_SAMPLE_SECONDS for the others,
        and take this process's out of the sums when it stops. Alone, a scrape samples them (`exposition`)."""
        directory = multiprocess_directory()
        if directory is None:
            yield
            return

        async def keep_sampling() -> None:
            while True:
                self.sample()
                await asyncio.sleep(GAUGE_SAMPLE_SECONDS)

        sampler = asyncio.create_task(keep_sampling())
        try:
            yield
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            mark_process_dead(os.getpid(), str(directory))


def metric_files(directory: Path) -> Iterator[tuple[Path, int]]:
    """prometheus-client's files in `directory`, each with the id of the process that writes it."""
    for path in directory.iterdir():
        if match := METRIC_FILE.fullmatch(path.name):
            yield path, int(match[1])


def forget_dead_processes(directory: Path) -> None:
    """Take the live gauges of processes that ended without saying so (killed) out of the sums, and drop the empty
    file of one killed while it made it, which the library could not read. Two workers may do it at once."""
    for path, pid in metric_files(directory):
        if is_running(pid):
            continue
        with contextlib.suppress(FileNotFoundError):  # another worker was first
            if path.name.startswith("gauge_live") or path.stat().st_size == 0:
                path.unlink()


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        pass
    return True


class RequestMetrics:
    """Counts every request by its route template (`/orders`, not the raw path, so the labels stay few)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._counters: dict[tuple[str, str, int], Counter] = {}
        """Each route, method and status's counter, looked up once (methods are the few HTTP knows)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            key = (getattr(scope.get("route"), "path", UNMATCHED), scope["method"], status)
            counter = self._counters.get(key)
            if counter is None:
                route, method, _ = key
                counter = self._counters[key] = self.metrics.requests.labels(route, method, str(status))
            counter.inc()
