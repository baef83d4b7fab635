"""Run the `orderlane` console script as an operator does: the executable pip installed beside this Python, with the
test's settings in ORDERLANE_* variables (tests.processes.environment), from the project's directory."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.processes import PROJECT_ROOT

ORDERLANE = Path(sys.executable).with_name("orderlane")
"""Where `pip install -e .` put the console script ([project.scripts] in pyproject.toml)."""


@dataclass(frozen=True, slots=True)
class Ran:
    code: int
    stdout: str
    stderr: str

    @property
    def error(self) -> str:
        """What it said on stderr, which must be one line and no traceback."""
        lines = self.stderr.splitlines()
        assert len(lines) == 1, self.stderr
        return lines[0]


async def start_orderlane(
    *args: str, env: dict[str, str], stdin: int = asyncio.subprocess.DEVNULL
) -> asyncio.subprocess.Process:
    """`orderlane ARGS`, its stdout and stderr piped."""
    assert ORDERLANE.exists(), f"no {ORDERLANE}: `pip install -e . --no-deps` installs the console script"
    return await asyncio.create_subprocess_exec(
        ORDERLANE,
        *args,
        cwd=PROJECT_ROOT,
        env=env,
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def orderlane(*args: str, env: dict[str, str], stdin: int = asyncio.subprocess.DEVNULL) -> Ran:
    """`orderlane ARGS` run to its end (within a minute)."""
    process = await start_orderlane(*args, env=env, stdin=stdin)
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return Ran(process.returncode, stdout.decode(), stderr.decode())


@contextmanager
def terminal(typed: str) -> Iterator[int]:
    """A pseudo-terminal on which `typed` has been typed already: the file descriptor to give a child as stdin."""
    primary, secondary = os.openpty()
    try:
        os.write(primary, typed.encode())
        yield secondary
    finally:
        os.close(secondary)
        os.close(primary)
