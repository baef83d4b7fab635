"""Causing faults on the broker's machine: `rabbitmqctl stop_app` / `start_app`, a memory alarm."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Awaitable, Callable

import pytest

REQUIRE_FAULT_TESTS = "ORDERLANE_REQUIRE_FAULT_TESTS"


def require_rabbitmqctl() -> str:
    """The path of a working rabbitmqctl; else skip, or fail where ORDERLANE_REQUIRE_FAULT_TESTS=1 (CI)."""
    path = shutil.which("rabbitmqctl")
    problem = None
    if path is None:
        problem = "rabbitmqctl is not installed here"
    elif subprocess.run([path, "status"], capture_output=True, check=False, timeout=60).returncode != 0:
        problem = "rabbitmqctl cannot reach the broker node (run the tests on the broker's machine, as root)"
    if problem is None:
        assert path is not None
        return path
    if os.environ.get(REQUIRE_FAULT_TESTS) == "1":
        pytest.fail(f"{problem}, and {REQUIRE_FAULT_TESTS}=1 forbids skipping the fault tests")
    pytest.skip(f"{problem}: the broker-restart fault tests need it")


async def rabbitmqctl(path: str, *args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        path, *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await process.communicate()
    assert process.returncode == 0, f"rabbitmqctl {' '.join(args)}: {stderr.decode()}"


async def restart_broker_app(
    path: str, *, down_seconds: float, while_down: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Stop the RabbitMQ application (connections drop, the node stays), wait, start it again. `while_down` runs
    once it is stopped, and the broker stays down until it has returned too."""
    await rabbitmqctl(path, "stop_app")
    try:
        outage = asyncio.sleep(down_seconds)
        await (outage if while_down is None else asyncio.gather(outage, while_down()))
    finally:
        await ensure_broker_app_running(path)


async def ensure_broker_app_running(path: str) -> None:
    await rabbitmqctl(path, "start_app")
    await rabbitmqctl(path, "await_startup")
