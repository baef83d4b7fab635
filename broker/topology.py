"""The queues orderlane needs, as data, and the one idempotent declaration both processes run."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import aiormq.exceptions
from aio_pika.abc import AbstractQueue, AbstractRobustChannel
from pamqp.common import FieldTable

from broker.errors import TopologyConflict
from broker.settings import Settings

DEFAULT_EXCHANGE = ""


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    arguments: FieldTable = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Topology:
    work: QueueSpec
    dead_letter: QueueSpec


def build_topology(settings: Settings) -> Topology:
    """The durable priority work queue, dead-lettering into `<queue>.dlq`, and that dead-letter queue."""
    dead_letter = QueueSpec(name=settings.dead_letter_queue)
    work = QueueSpec(
        name=settings.queue,
        arguments={
            "x-max-priority": settings.max_priority,
            "x-dead-letter-exchange": DEFAULT_EXCHANGE,
            "x-dead-letter-routing-key": dead_letter.name,
        },
    )
    return Topology(work=work, dead_letter=dead_letter)


_INEQUIVALENT_ARG = re.compile(r"inequivalent arg '[^']+'")


async def declare_queue(channel: AbstractRobustChannel, spec: QueueSpec) -> AbstractQueue:
    """Declare one durable queue; a 406 for other arguments becomes a TopologyConflict naming the argument."""
    try:
        return await channel.declare_queue(spec.name, durable=True, arguments=dict(spec.arguments))
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        reason = str(exc.args[0] if exc.args else exc)
        match = _INEQUIVALENT_ARG.search(reason)
        raise TopologyConflict(spec.name, reason[match.start() :] if match else reason) from exc


async def declare_topology(channel: AbstractRobustChannel, topology: Topology) -> AbstractQueue:
    """Declare every queue (idempotent) and return the work queue; the robust channel re-declares on reconnect."""
    await declare_queue(channel, topology.dead_letter)
    return await declare_queue(channel, topology.work)
