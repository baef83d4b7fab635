"""The multiprocess metrics directory in one process (api/multiprocess.py): choosing, clearing and removing it,
forgetting killed processes, and sharing the sampled gauges. tests/test_workers.py runs it across real workers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from api.multiprocess import (
    MULTIPROCESS_DIRECTORY,
    forget_dead_processes,
    is_running,
    metric_files,
    metrics_directory,
    multiprocess_directory,
    registry_to_scrape,
    sharing,
)
from broker.errors import ConfigurationError


@pytest.fixture
def no_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROCESS_DIRECTORY, raising=False)


@pytest.fixture
def given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PROMETHEUS_MULTIPROC_DIR the user set."""
    monkeypatch.setenv(MULTIPROCESS_DIRECTORY, str(tmp_path))
    return tmp_path


@pytest.fixture
def dead_pid() -> int:
    """The id of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not is_running(child.pid)
    return child.pid


@pytest.mark.usefixtures("no_directory")
def test_one_process_has_no_directory_and_scrapes_its_own_registry() -> None:
    with metrics_directory(workers=1):
        assert multiprocess_directory() is None
        own = CollectorRegistry()
        assert registry_to_scrape(own) is own


@pytest.mark.usefixtures("no_directory")
def test_several_workers_without_one_given_share_a_temporary_directory_removed_at_the_end() -> None:
    with metrics_directory(workers=2):
        directory = multiprocess_directory()
        assert directory is not None and directory.is_dir()
    assert not directory.exists()
    assert MULTIPROCESS_DIRECTORY not in os.environ


def test_a_given_directory_is_cleared_of_the_libraries_files_only_and_kept(given: Path) -> None:
    stale = [given / "counter_12.db", given / "gauge_livesum_12.db", given / "histogram_7.db"]
    theirs = given / "notes.txt"
    for path in [*stale, theirs]:
        path.write_bytes(b"x")
    with metrics_directory(workers=2):
        assert multiprocess_directory() == given
        assert list(given.iterdir()) == [theirs]
    assert os.environ[MULTIPROCESS_DIRECTORY] == str(given)


@pytest.mark.parametrize("kind", ["missing", "a file"])
def test_a_given_directory_that_cannot_be_written_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    path = tmp_path / "metrics"
    if kind == "a file":
        path.write_text("")
    monkeypatch.setenv(MULTIPROCESS_DIRECTORY, str(path))
    with pytest.raises(ConfigurationError, match=f"PROMETHEUS_MULTIPROC_DIR={path} is not a directory"):
        with metrics_directory(workers=2):
            pass


def test_metric_files_are_the_librarys_each_with_its_process(tmp_path: Path) -> None:
    for name in ["counter_1.db", "gauge_livemax_2.db", "summary_3.db", "gauge_all_4.db", "counter.db", "x_5.db"]:
        (tmp_path / name).write_bytes(b"")
    assert sorted((path.name, pid) for path, pid in metric_files(tmp_path)) == [
        ("counter_1.db", 1),
        ("gauge_all_4.db", 4),
        ("gauge_livemax_2.db", 2),
        ("summary_3.db", 3),
    ]


def test_a_killed_process_loses_its_live_gauges_and_its_empty_files_but_keeps_its_counts(
    tmp_path: Path, dead_pid: int
) -> None:
    alive = os.getpid()
    kept = [
        tmp_path / f"counter_{dead_pid}.db",
        tmp_path / f"gauge_livesum_{alive}.db",
        tmp_path / f"counter_{alive}.db",
    ]
    forgotten = [tmp_path / f"gauge_livesum_{dead_pid}.db", tmp_path / f"histogram_{dead_pid}.db"]
    for path in kept:
        path.write_bytes(b"values")
    forgotten[0].write_bytes(b"values")
    forgotten[1].write_bytes(b"")  # killed while it made the file
    forget_dead_processes(tmp_path)
    assert sorted(tmp_path.iterdir()) == sorted(kept)


async def test_sharing_samples_for_the_others_and_leaves_the_sums_when_the_process_stops(given: Path) -> None:
    live = given / f"gauge_livesum_{os.getpid()}.db"
    live.write_bytes(b"values")
    sampled = asyncio.Event()
    async with sharing(sampled.set):
        await sampled.wait()
        assert live.exists()
    assert not live.exists()


@pytest.mark.usefixtures("no_directory")
async def test_alone_sharing_starts_no_sampler() -> None:
    before = asyncio.all_tasks()
    async with sharing(pytest.fail):
        assert asyncio.all_tasks() == before
