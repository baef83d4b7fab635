"""The API's metrics across several processes: prometheus-client's multiprocess mode and its directory.

With several API processes on one port (`python -m api --workers N`), a scrape reaches one of them, which must
answer for all: prometheus-client's multiprocess mode, where every process writes its values to files in one
directory (`PROMETHEUS_MULTIPROC_DIR`) and the one scraped reads them all. It is the library's own answer, used the
same way under gunicorn, and needs no process of its own; the alternatives (a scrape target per process, or a push
gateway) would put the workers in the user's Prometheus configuration. Its limit: a gauge is only what a process
`set`, so gauges read from a function are sampled into their values every GAUGE_SAMPLE_SECONDS (`sharing`).

Everything about that directory is here: choosing, clearing and removing it (`metrics_directory`), reading every
process's files (`registry_to_scrape`), and taking a process's live gauges out when it ends (`sharing`,
`forget_dead_processes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from broker.errors import ConfigurationError

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


@contextlib.contextmanager
def metrics_directory(workers: int) -> Iterator[None]:
    """While the API serves from `workers` processes, the directory they write their metrics to:
    PROMETHEUS_MULTIPROC_DIR if set (a tmpfs, say), cleared of prometheus-client's files first, as the library asks
    between runs; else, for several workers, a temporary one, removed at the end; else none."""
    given = multiprocess_directory()
    if given is not None:
        if not given.is_dir() or not os.access(given, os.W_OK | os.X_OK):
            raise ConfigurationError(f"{MULTIPROCESS_DIRECTORY}={given} is not a directory this process may write to")
        for stale, _ in metric_files(given):
            stale.unlink()
        yield
        return
    if workers == 1:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="orderlane-metrics-") as directory:
        os.environ[MULTIPROCESS_DIRECTORY] = directory  # the workers inherit it and read it as they import
        try:
            yield
        finally:
            del os.environ[MULTIPROCESS_DIRECTORY]


def registry_to_scrape(own: CollectorRegistry) -> CollectorRegistry:
    """What a scrape of this process reads: its `own` registry, or, with several processes, a registry of every
    process's metrics in the directory, those of processes killed without a word aside."""
    directory = multiprocess_directory()
    if directory is None:
        return own
    forget_dead_processes(directory)
    every_process = CollectorRegistry()
    MultiProcessCollector(every_process, path=str(directory))
    return every_process


@contextlib.asynccontextmanager
async def sharing(sample: Callable[[], None]) -> AsyncIterator[None]:
    """While a process serves: with several processes, `sample` its gauges every GAUGE_SAMPLE_SECONDS for the
    others, and take its live gauges out of the sums when it stops. Alone, nothing (a scrape samples them)."""
    directory = multiprocess_directory()
    if directory is None:
        yield
        return

    async def keep_sampling() -> None:
        while True:
            sample()
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
    """Whether process `pid` exists (another user's too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        pass
    return True
