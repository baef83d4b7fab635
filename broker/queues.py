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


def queue_names(topology: Topology) -> list[str]:
    """Work queue first, then the delay queues in order, then the dead-letter queue."""
    return [topology.work.name, *(spec.name for spec in topology.retries), topology.dead_letter.name]


async def queue_stats(connection: AbstractRobustConnection, topology: Topology) -> list[QueueStats]:
    """Passive declares on a short-lived channel of their own: a missing queue makes the broker close the
    channel it was asked on, which must not be the one that publishes or consumes."""
    stats = []
    channel: AbstractChannel = await connection.channel(publisher_confirms=False)
    try:
        for name in queue_names(topology):
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
