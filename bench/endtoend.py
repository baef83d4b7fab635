"""End to end: orders posted over HTTP at a steady rate, a mix of priorities, one consumer; the latency from the
HTTP post to the handler's start, per priority level. The arrival rate is set above what the consumer can
handle, so that a backlog builds and the broker has something to order by priority."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass

import httpx

from bench.intake import serving_api
from bench.workload import bench_settings, delete_queues
from broker.connection import open_broker
from broker.messages import Order
from consumers.runner import Consumer

CLIENTS = 16


@dataclass(frozen=True, slots=True)
class LevelLatency:
    priority: int
    orders: int
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True, slots=True)
class EndToEndResult:
    rate: float
    seconds: float
    handler_ms: float
    prefetch: int
    levels: tuple[LevelLatency, ...]


async def post_steadily(port: int, rate: float, seconds: float, posted: dict[str, float]) -> None:
    rng = random.Random(7)
    schedule: asyncio.Queue[tuple[float, dict[str, object]]] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2
    for n in range(int(rate * seconds)):
        vip = rng.random() < 0.1
        body = {"order_id": f"e-{n:06d}", "priority": rng.randint(0, 9), "items": ["x"]}
        if vip:
            body["user_type"] = "vip"
        schedule.put_nowait((start + n / rate, body))

    async def client() -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            while not schedule.empty():
                due, body = schedule.get_nowait()
                await asyncio.sleep(max(0.0, due - loop.time()))
                posted[str(body["order_id"])] = time.perf_counter()
                response = await http.post("/orders", json=body)
                response.raise_for_status()

    await asyncio.gather(*(client() for _ in range(CLIENTS)))


async def measure_end_to_end(
    rate: float, seconds: float, handler_ms: float, prefetch: int, port: int
) -> EndToEndResult:
    settings = bench_settings(prefetch=prefetch)
    posted: dict[str, float] = {}
    started: dict[str, tuple[int, float]] = {}
    total = int(rate * seconds)
    all_started = asyncio.Event()

    async def handler(order: Order) -> None:
        effective = 0 if order.user_type == "vip" else order.priority
        started[order.order_id] = (effective, time.perf_counter())
        if len(started) == total:
            all_started.set()
        await asyncio.sleep(handler_ms / 1000)

    try:
        async with serving_api(settings, port), open_broker(settings) as broker:
            consumer = Consumer(broker, handler, settings, concurrency=prefetch)
            await consumer.start()
            await post_steadily(port, rate, seconds, posted)
            async with asyncio.timeout(600):
                await all_started.wait()
            await consumer.stop(grace_seconds=5)
    finally:
        await delete_queues(settings)
    return EndToEndResult(rate, seconds, handler_ms, prefetch, levels(posted, started))


def levels(posted: dict[str, float], started: dict[str, tuple[int, float]]) -> tuple[LevelLatency, ...]:
    by_level: dict[int, list[float]] = {}
    for order_id, (level, at) in started.items():
        by_level.setdefault(level, []).append((at - posted[order_id]) * 1000)
    result = []
    for level, latencies in sorted(by_level.items()):
        cuts = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
        result.append(LevelLatency(level, len(latencies), statistics.median(latencies), cuts[98], max(latencies)))
    return tuple(result)
