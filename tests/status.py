"""A redis-server of a test's own, which the test may pause, stop and start again without touching the machine's
Redis."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tests.faults import REQUIRE_FAULT_TESTS
from tests.processes import free_port


def require_redis_server() -> str:
    path = shutil.which("redis-server")
    if path is not None:
        return path
    if os.environ.get(REQUIRE_FAULT_TESTS) == "1":
        pytest.fail(f"redis-server is not installed, and {REQUIRE_FAULT_TESTS}=1 forbids skipping the fault tests")
    pytest.skip("redis-server is not installed: the status store fault tests start one of their own")


class RedisServer:
    """`redis-server` on a free port, keeping nothing on disk (as the machine's does)."""

    def __init__(self, path: str) -> None:
        self.port = free_port()
        self._path = path
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            self._path,
            *("--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        client = Redis.from_url(self.url)
        try:
            async with asyncio.timeout(10):
                while True:
                    try:
                        await client.ping()
                        return
                    except RedisError:
                        await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers, as in a network partition; nothing is lost."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    async def stop(self) -> None:
        """Stop it; what it held is gone (nothing on disk)."""
        if self._process is None or self._process.returncode is not None:
            return
        self._process.send_signal(signal.SIGCONT)
        self._process.terminate()
        await self._process.wait()


@asynccontextmanager
async def redis_server() -> AsyncIterator[RedisServer]:
    server = RedisServer(require_redis_server())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
