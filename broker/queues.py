"""The backlog: how many messages wait in each of orderlane's queues, and how many consumers take from them."""

from __future__ import annotations

from dataclasses import dataclass

import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from broker.topology import Topology


@dataclass(frozen=True, slots=True)
class QueueStats:
    queue: str
    messages: int | None
    """Ready messages (not those delivered and unacked); None when the queue does not exist."""
    consumers: int | None


async def queue_stats(
    connection: AbstractRobustConnection, topology: Topology, *, work_only: bool = False
) -> list[QueueStats]:
    """Every queue of the topology, or its lanes' work queues only. Passive declares on a short-lived channel of
    their own: a missing queue makes the broker close the channel it was asked on, which must not be the one that
    publishes or consumes."""
    stats = []
    channel: AbstractChannel = await connection.channel(publisher_confirms=False)
    try:
        specs = [lane.work for lane in topology.lanes] if work_only else topology.queues
        for name in (spec.name for spec in specs):
            try:
                declared = await channel.declare_queue(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                stats.append(QueueStats(queue=name, messages=None, consumers=None))
                await channel.close()
                channel = await connection.channel(publisher_confirms=False)
                continue
            result = declared.declaration_result
            stats.append(QueueStats(queue=name, messages=result.message_count, consumers=result.consumer_count))
    finally:
        await channel.close()
    return stats
