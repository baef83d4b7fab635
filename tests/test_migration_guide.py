"""docs/migrating-from-celery.md, run as written: its handler file, and every command of its `sh` blocks, on the
real broker (the API on a free port instead of 8000)."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import sys
from pathlib import Path

from bench.intake import wait_ready
from broker.settings import Settings
from tests.amqp import wait_until
from tests.processes import PROJECT_ROOT, environment, free_port, read_until

GUIDE = PROJECT_ROOT / "docs" / "migrating-from-celery.md"
CONSUMER = "python -m consumers --handler shop_tasks:process_order --concurrency 4"
API = "python -m api"
POST = (
    'curl -s -X POST http://127.0.0.1:8000/orders -H \'content-type: application/json\' -d \'{"order_id": "A-1001", '
    '"priority": 1, "items": ["book", "lamp"], "user_type": "vip"}\''
)
FOLLOW = "curl -s http://127.0.0.1:8000/orders/A-1001"
BACKLOG = "python -m consumers status"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)


def command(line: str, port: int) -> list[str]:
    """A line of the guide as this test runs it: this Python, and the API's port."""
    words = shlex.split(line.replace("127.0.0.1:8000", f"127.0.0.1:{port}"))
    return [sys.executable, *words[1:]] if words[0] == "python" else words


async def output_of(words: list[str], env: dict[str, str], cwd: Path) -> str:
    process = await asyncio.create_subprocess_exec(
        *words, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, f"{' '.join(words)}: {err.decode()}"
    return out.decode()


def test_the_guide_has_no_command_this_test_does_not_run() -> None:
    lines = [line for block in blocks("sh") for line in block.splitlines() if line.strip()]
    assert sorted(lines) == sorted([CONSUMER, API, POST, FOLLOW, BACKLOG])


async def test_the_guide_runs_as_written(settings: Settings, tmp_path: Path) -> None:
    [handler_file] = blocks("python")
    (tmp_path / "shop_tasks.py").write_text(handler_file)
    port = free_port()
    env = environment(settings)
    consumer = await asyncio.create_subprocess_exec(
        *command(CONSUMER, port),
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    api = await asyncio.create_subprocess_exec(
        *command(API, port),
        "--port",
        str(port),
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    lines: list[str] = []
    try:
        await read_until(consumer, "consumer ready", 1, lines)
        await wait_ready(port)
        accepted = json.loads(await output_of(command(POST, port), env, tmp_path))
        assert (accepted["status"], accepted["priority"]) == ("accepted", 0), accepted

        async def processed() -> bool:
            status: dict[str, object] = json.loads(await output_of(command(FOLLOW, port), env, tmp_path))
            return status["state"] == "processed"

        await wait_until(processed, what="the order processed")
        backlog = await output_of(command(BACKLOG, port), env, tmp_path)
        await read_until(consumer, "fulfilling A-1001", 1, lines)
    finally:
        for process in (consumer, api):
            process.terminate()
            await process.wait()
    assert settings.queue in backlog
    assert "fulfilling A-1001 for a vip customer: book, lamp (priority 0, attempt 1)" in "".join(lines)
