"""Run the real entry points (`python -m api`, `python -m consumers`) as child processes."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from bench.intake import serving_api as bench_serving_api
from broker.settings import LaneConfig, Settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def lane_text(lane: LaneConfig) -> str:
    """A lane as ORDERLANE_LANES spells it."""
    prefetch = f":{lane.prefetch}" if lane.prefetch else ""
    return f"{lane.name}:{lane.first}-{lane.last}{prefetch}"


def environment(settings: Settings, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ORDERLANE_")}
    env.update(
        ORDERLANE_AMQP_URL=str(settings.amqp_url),
        ORDERLANE_QUEUE=settings.queue,
        ORDERLANE_STARTUP_TIMEOUT=str(settings.startup_timeout),
        ORDERLANE_STATUS_URL=str(settings.status_url or ""),
        ORDERLANE_STATUS_TTL=str(settings.status_ttl),
        ORDERLANE_LANES=",".join(lane_text(lane) for lane in settings.lanes),
        **extra,
    )
    return env


async def start(module: str, *args: str, env: dict[str, str], stdout: bool = False) -> asyncio.subprocess.Process:
    """Start `python -m module`, its stderr (the log) piped, its stdout piped only if asked for."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        cwd=PROJECT_ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE if stdout else asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def run(
    module: str, *args: str, env: dict[str, str], within: float = 60, stdout: bool = False
) -> tuple[int, str]:
    """Run to completion; return the exit code and what it wrote to stderr, or to stdout if asked for."""
    process = await start(module, *args, env=env, stdout=stdout)
    async with asyncio.timeout(within):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, (out if stdout else err).decode()


async def read_until(process: asyncio.subprocess.Process, marker: str, count: int, lines: list[str]) -> None:
    """Collect stderr lines into `lines` until `marker` has appeared `count` times."""
    assert process.stderr is not None
    seen = 0
    while seen < count:
        raw = await process.stderr.readline()
        if not raw:
            raise AssertionError(f"process ended before {count}x {marker!r}:\n" + "".join(lines))
        line = raw.decode()
        lines.append(line)
        seen += marker in line


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def collect_output(process: asyncio.subprocess.Process) -> asyncio.Task[bytes]:
    """Keep reading the process's stderr in the background, so that a full pipe never blocks its logging."""
    assert process.stderr is not None
    return asyncio.create_task(process.stderr.read())


@asynccontextmanager
async def serving_api(settings: Settings, **environment_extra: str) -> AsyncIterator[int]:
    """`python -m api` on a free port with the tests' environment (bench.intake.serving_api), yielded once ready;
    on the way out it must stop cleanly on SIGTERM."""
    port = free_port()
    async with bench_serving_api(settings, port, env=environment(settings, **environment_extra)) as api:
        yield port
    assert api.returncode == 0, f"python -m api exited {api.returncode} on SIGTERM"
