"""The overload benchmark's load generator: new orders POSTed to the API at a steady rate, one in `vip_every` of
them VIP, and every refused order (an answer with a Retry-After: 429 backlog_over_budget, or a 503) POSTed again, the
same order_id and body, once its Retry-After has passed, until it is accepted or the sale ends.

One process cannot be a sale's thousands of clients, each retrying on its own: the orders refused pile up second by
second, and a generator posting every due retry at once would soon post thousands a second and, on a 2-core machine
shared with the broker, the API and the consumer, measure itself. So retries go out at most `retries_per_second`,
the earliest due first and never before their Retry-After, and a new order that is due goes before them. How late
each retry went past its Retry-After is recorded, and so is every new order's POST (its rate is the sale's real one).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import heapq
import itertools
import math
import time
from dataclasses import dataclass
from typing import Final

import httpx

from bench.workload import order
from broker.messages import encode_order

CLIENTS: Final = 32
"""Connections to the API, each posting one order at a time."""
JSON: Final = {"content-type": "application/json"}


@dataclass(slots=True)
class Story:
    """One order's tries."""

    order_id: str
    vip: bool
    body: bytes
    first_posted_at: float | None = None
    """time.time() just before its first POST: its wait starts there."""
    tries: int = 0
    refused: int = 0
    """429 answers."""
    failed: int = 0
    """Other answers but 2xx, and POSTs that got none."""
    accepted: bool = False
    retry_due: float | None = None
    """The event loop's time its last Retry-After ends."""


class FlashSale:
    """Orders named `{name}-NNNNNNN`, `per_second` of them for `seconds`, posted by `run()`; the tallies are read
    while it runs."""

    def __init__(
        self, name: str, per_second: float, seconds: float, *, vip_every: int, retries_per_second: float
    ) -> None:
        self.stories: list[Story] = []
        self.accepted = 0
        self.refused = 0
        self.failed = 0
        self.retry_afters: list[int] = []
        """Every Retry-After received, in seconds."""
        self.retry_lateness: list[float] = []
        """Seconds each retry went out after its Retry-After ended (never before it)."""
        self.started_at = 0.0
        """time.time() when `run()` began."""
        self._name = name
        self._per_second = per_second
        self.seconds = seconds
        self._total = round(per_second * seconds)
        self._vip_every = vip_every
        self._retry_interval = 1 / retries_per_second
        self._retries: list[tuple[float, int, Story]] = []
        """A heap of refused orders by the time their Retry-After ends."""
        self._pushes = itertools.count()
        self._retry_added = asyncio.Event()
        self._turn = asyncio.Lock()
        self._began = self._ends = self._retry_slot = 0.0

    async def run(self, port: int) -> None:
        """Post until `seconds` have passed; the POSTs under way then are answered before this returns."""
        loop = asyncio.get_running_loop()
        self.started_at, self._began = time.time(), loop.time()
        self._ends = self._began + self.seconds
        limits = httpx.Limits(max_connections=CLIENTS)
        gc.disable()  # a collection pausing this one process would pause every client it plays: the sale's VIPs too
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30) as client:
                await asyncio.gather(*(self._send(client) for _ in range(CLIENTS)))
        finally:
            gc.enable()

    async def _send(self, client: httpx.AsyncClient) -> None:
        while (story := await self._next()) is not None:
            await self._post(client, story)

    async def _next(self) -> Story | None:
        """The next order to post, once it is due; None when the sale is over. One sender waits for it at a time."""
        loop = asyncio.get_running_loop()
        async with self._turn:
            while (now := loop.time()) < self._ends:
                made = len(self.stories)
                new_due = self._began + made / self._per_second if made < self._total else math.inf
                retry_due = max(self._retries[0][0], self._retry_slot) if self._retries else math.inf
                if new_due <= now:
                    return self._new_story(made)
                if retry_due <= now:
                    self._retry_slot = max(self._retry_slot, now) + self._retry_interval
                    return heapq.heappop(self._retries)[2]
                self._retry_added.clear()  # a retry refused meanwhile may be due before what is awaited here
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(min(new_due, retry_due, self._ends)):
                        await self._retry_added.wait()
        return None

    def _new_story(self, number: int) -> Story:
        vip = number % self._vip_every == self._vip_every - 1
        new = order(number, user_type="vip" if vip else "regular", prefix=self._name)
        story = Story(new.order_id, vip, encode_order(new))
        self.stories.append(story)
        return story

    async def _post(self, client: httpx.AsyncClient, story: Story) -> None:
        loop = asyncio.get_running_loop()
        if story.retry_due is not None:
            self.retry_lateness.append(loop.time() - story.retry_due)
        if story.first_posted_at is None:
            story.first_posted_at = time.time()
        story.tries += 1
        try:
            response = await client.post("/orders", content=story.body, headers=JSON)
        except httpx.TransportError:
            story.failed += 1
            self.failed += 1
            return
        if response.is_success:
            story.accepted = True
            self.accepted += 1
            return
        if response.status_code == 429:
            story.refused += 1
            self.refused += 1
        else:
            story.failed += 1
            self.failed += 1
        if (retry_after := response.headers.get("retry-after")) is not None:
            self._retry_later(story, int(retry_after), loop.time())

    def _retry_later(self, story: Story, seconds: int, now: float) -> None:
        self.retry_afters.append(seconds)
        story.retry_due = now + seconds
        heapq.heappush(self._retries, (story.retry_due, next(self._pushes), story))
        self._retry_added.set()
