"""Hostile clients, for the flood benchmark and the flood tests: connections that send part of a request and then
nothing, to 127.0.0.1 only.

- `HALF_HEAD`: half a request head (slowloris).
- `TRICKLED_BODY`: a whole head announcing a body, and the body's first bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Final

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
        return Held(reply, time.perf_counter() - began)
    finally:
        writer.close()


class Flood:
    """`connections` opened at once, each sending `payload`; `run()` returns once the server has closed every one."""

    def __init__(self, port: int, payload: bytes, connections: int) -> None:
        self.port = port
        self.payload = payload
        self.connections = connections
        self._sent = asyncio.Semaphore(0)

    async def run(self) -> list[Held]:
        return await asyncio.gather(*(hold(self.port, self.payload, self._sent) for _ in range(self.connections)))

    async def all_sent(self) -> None:
        """Return once every connection is open and has sent its payload."""
        for _ in range(self.connections):
            await self._sent.acquire()


async def sustained_flood(port: int, payload: bytes, connections: int, stop: asyncio.Event) -> int:
    """Keep `connections` open, each opened again as soon as the server closes it, until `stop`; return how many
    were opened in all."""
    opened = 0

    async def keep_one() -> None:
        nonlocal opened
        while not stop.is_set():
            opened += 1
            with contextlib.suppress(OSError):
                await hold(port, payload)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(keep_one()) for _ in range(connections)]
        await stop.wait()
        for task in tasks:
            task.cancel()
    return opened
