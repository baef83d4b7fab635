"""What quorum queues cost against mirrored classic queues, on the same 3-node cluster in the same run
(scripts/cluster, ol1..ol3 on 5681..5683; the classic queues mirrored to all nodes by policy, as the tests do):
intake (confirmed publishes through orderlane's publisher, node 1, 64 in flight) and drain (orderlane's consumer on
node 2, a handler that does nothing, prefetch and concurrency 50), alternating the two types for `--rounds` rounds.

    .venv/bin/python -m scripts.quorum_cost [--orders 5000] [--rounds 2]

As root. Prints orders per second for each round. Two cores shared with the nodes and everything else: noisy."""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from pydantic import AmqpDsn

from broker.connection import open_broker
from broker.messages import Order
from broker.publisher import OrderPublisher
from broker.settings import Settings
from consumers.runner import Consumer
from tests.cluster import Cluster, running_cluster

IN_FLIGHT = 64
DEPTH = 50


async def intake_and_drain(cluster: Cluster, queue_type: str, orders: int) -> tuple[float, float]:
    base = Settings(queue=f"test-cost-{uuid.uuid4().hex[:8]}", queue_type=queue_type, status_url=None)
    publishing = base.model_copy(update={"amqp_url": AmqpDsn(cluster.url(1))})
    consuming = base.model_copy(update={"amqp_url": AmqpDsn(cluster.url(2))})
    async with open_broker(publishing) as broker:
        publisher = OrderPublisher(broker, publishing)
        pending = iter(range(orders))

        async def publish_some() -> None:
            for number in pending:
                await publisher.publish(Order(order_id=f"o-{number}", items=["tea"]))

        began = time.perf_counter()
        await asyncio.gather(*(publish_some() for _ in range(IN_FLIGHT)))
        intake = orders / (time.perf_counter() - began)
    done = asyncio.Event()
    handled = 0

    async def handler(_: Order) -> None:
        nonlocal handled
        handled += 1
        if handled == orders:
            done.set()

    async with open_broker(consuming) as broker:
        consumer = Consumer(broker, handler, consuming, prefetch=DEPTH, concurrency=DEPTH)
        began = time.perf_counter()
        await consumer.start()
        await done.wait()
        drain = orders / (time.perf_counter() - began)
        await consumer.stop(grace_seconds=5)
    return intake, drain


async def measure(orders: int, rounds: int) -> None:
    with running_cluster() as cluster:
        for round_number in range(1, rounds + 1):
            for queue_type in ("classic", "quorum"):
                intake, drain = await intake_and_drain(cluster, queue_type, orders)
                label = "mirrored classic" if queue_type == "classic" else "quorum"
                print(f"round {round_number}, {label}: intake {intake:,.0f}/s, drain {drain:,.0f}/s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(measure(args.orders, args.rounds))


if __name__ == "__main__":
    main()
