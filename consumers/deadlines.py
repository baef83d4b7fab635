"""Handler timeouts for many concurrent handlers with one timer.

`asyncio.timeout()` per delivery schedules and cancels a timer for every message, a measurable share of the
consumer's cost at thousands of messages a second. Here each handler only notes its deadline in a dict, and one
watchdog task wakes every `resolution` seconds and cancels the handlers that ran past theirs. A timeout fires up to
`resolution` late, which is at most a tenth of the timeout and never more than a second.
"""

from __future__ import annotations

import asyncio
import contextlib


class Deadlines:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.resolution = min(1.0, seconds / 10)
        self._due: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._watchdog: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch())

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None

    def arm(self, task: asyncio.Task[object]) -> None:
        self._due[task] = asyncio.get_running_loop().time() + self.seconds

    def disarm(self, task: asyncio.Task[object]) -> bool:
        """Forget `task`'s deadline; True if the watchdog cancelled it for running past it."""
        self._due.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.resolution)
            now = loop.time()
            for task in [task for task, due in self._due.items() if due <= now]:
                del self._due[task]
                self._expired.add(task)
                task.cancel()
