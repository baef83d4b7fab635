"""Alarm (issue 21): how soon a client hears that the broker blocks publishing, and how soon orders are taken again
once the alarm clears, from `python -m api` at its defaults.

Each round: the API has taken an order (202); a memory alarm is raised on the broker (a high watermark of 1 MB, as
tests/test_faults.py raises it; rabbitmqctl must run here, on the broker's machine); orders are then posted one
after another, each timed, until one is refused. The broker blocks a connection as it next publishes and says so
(`connection.blocked`): the first 503 `broker_blocked` is that order, answered as the frame arrives rather than after
ORDERLANE_PUBLISH_TIMEOUT. Then, timed from that answer, `/readyz` until it says 503, and one more order, which must be
refused without being tried. The watermark goes back (0.4, whatever happens) and orders are posted every
RETRY_SECONDS until one gets 202: the time from the restore to that answer.

The broker is the machine's own: a run blocks every publisher on it for a few seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import statistics
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final

import httpx

from bench.intake import serving_api
from bench.priority import free_port
from bench.tables import table
from bench.workload import bench_settings, delete_queues, order
from broker.connection import open_broker
from broker.messages import Order, encode_order

RETRY_SECONDS: Final = 0.05
MOST_POSTS: Final = 100
"""Posted after the alarm was raised without one refused: the alarm did not take, and the round fails."""
JSON_CONTENT: Final = {"content-type": "application/json"}


@dataclass(frozen=True, slots=True)
class AlarmRound:
    taken_after_raised: int
    """Orders answered 202 after rabbitmqctl had raised the alarm, before the first 503 (the broker's memory monitor
    had not acted on it yet)."""
    first_refused_ms: float
    """The POST of the order the broker blocked, from its request to its 503."""
    first_state: str
    """That order's status: `unconfirmed`, as it may still be stored when the alarm clears."""
    not_ready_ms: float
    """From that 503 to `/readyz` answering 503."""
    refused_again_ms: float
    """The next POST, refused without a publish."""
    taken_again_ms: float
    """From the watermark's restore (rabbitmqctl returned) to a 202."""


@dataclass(frozen=True, slots=True)
class AlarmResult:
    publish_timeout_s: float
    """What a blocked publish would wait for without `connection.blocked`."""
    rounds: tuple[AlarmRound, ...]


def require_rabbitmqctl() -> str:
    path = shutil.which("rabbitmqctl")
    if path is None:
        raise SystemExit(
            "bench: the alarm scenario raises a memory alarm with rabbitmqctl: run it on the broker's machine"
        )
    return path


async def set_watermark(rabbitmqctl: str, *watermark: str) -> None:
    process = await asyncio.create_subprocess_exec(
        rabbitmqctl, "set_vm_memory_high_watermark", *watermark, stdout=asyncio.subprocess.DEVNULL
    )
    if await process.wait() != 0:
        raise RuntimeError(f"rabbitmqctl set_vm_memory_high_watermark {' '.join(watermark)} failed")


@asynccontextmanager
async def memory_alarm(rabbitmqctl: str) -> AsyncIterator[None]:
    """A memory alarm on the broker while the context is open (a high watermark of 1 MB, far below what it uses): it
    blocks every publishing connection. The broker is shared: the watermark goes back to its default (0.4) on the
    way out, whatever happens."""
    await set_watermark(rabbitmqctl, "absolute", "1MB")
    try:
        yield
    finally:
        await set_watermark(rabbitmqctl, "0.4")


async def timed_post(client: httpx.AsyncClient, posted: Order) -> tuple[httpx.Response, float]:
    """POST an order; its answer and how long it took, in milliseconds."""
    body = encode_order(posted)
    started = time.perf_counter()
    response = await client.post("/orders", content=body, headers=JSON_CONTENT)
    return response, (time.perf_counter() - started) * 1000


async def alarm_round(rabbitmqctl: str) -> AlarmRound:
    settings = bench_settings()
    port = free_port()
    numbers = itertools.count()

    def new_order() -> Order:
        return order(next(numbers), prefix="alarm")

    try:
        async with open_broker(settings):
            pass
        async with serving_api(settings, port), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            response, _ = await timed_post(client, new_order())
            assert response.status_code == 202, response.text
            async with memory_alarm(rabbitmqctl):
                for posted in range(MOST_POSTS):
                    response, first_ms = await timed_post(client, refused := new_order())
                    if response.status_code != 202:
                        taken = posted
                        break
                else:
                    raise RuntimeError(f"{MOST_POSTS} orders taken under the alarm: it did not take")
                assert response.json()["details"][0]["type"] == "broker_blocked", response.text
                refused_at = time.perf_counter()
                while (await client.get("/readyz")).status_code != 503:  # noqa: ASYNC110 - a poll, as a probe polls
                    await asyncio.sleep(RETRY_SECONDS)
                not_ready_ms = (time.perf_counter() - refused_at) * 1000
                state = (await client.get(f"/orders/{refused.order_id}")).json()["state"]
                again, again_ms = await timed_post(client, new_order())
                assert again.status_code == 503, again.text
            restored_at = time.perf_counter()  # the watermark is back as the context exits
            while (await timed_post(client, new_order()))[0].status_code != 202:  # noqa: ASYNC110 - a client's retries
                await asyncio.sleep(RETRY_SECONDS)
            taken_again_ms = (time.perf_counter() - restored_at) * 1000
    finally:
        await delete_queues(settings)
    return AlarmRound(taken, first_ms, state, not_ready_ms, again_ms, taken_again_ms)


async def measure_alarm(rounds: int, ran: Callable[[], object]) -> AlarmResult:
    rabbitmqctl = require_rabbitmqctl()
    found = []
    for _ in range(rounds):
        found.append(await alarm_round(rabbitmqctl))
        ran()
    return AlarmResult(bench_settings().publish_timeout, tuple(found))


def show_alarm(results: Sequence[AlarmResult]) -> str:
    result = results[0]
    header = (
        "round",
        "202 after raised",
        "first 503 ms",
        "its status",
        "/readyz 503 ms",
        "next 503 ms",
        "202 again ms",
    )
    rows: list[tuple[object, ...]] = [
        (
            n,
            r.taken_after_raised,
            r.first_refused_ms,
            r.first_state,
            r.not_ready_ms,
            r.refused_again_ms,
            r.taken_again_ms,
        )
        for n, r in enumerate(result.rounds, start=1)
    ]
    if len(result.rounds) > 1:
        rows.append(
            (
                "median",
                "",
                statistics.median(r.first_refused_ms for r in result.rounds),
                "",
                statistics.median(r.not_ready_ms for r in result.rounds),
                statistics.median(r.refused_again_ms for r in result.rounds),
                statistics.median(r.taken_again_ms for r in result.rounds),
            )
        )
    notes = (
        f"(the API at its defaults; without connection.blocked the first order would wait the publish timeout, "
        f"{result.publish_timeout_s:g} s; /readyz timed from the first 503, polled every {RETRY_SECONDS * 1000:g} ms; "
        "202 again timed from the watermark's restore)"
    )
    return table(header, rows) + "\n" + notes
