"""The queues orderlane needs, as data, and the one idempotent declaration both processes run."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import aiormq.exceptions
from aio_pika.abc import AbstractQueue, AbstractRobustChannel
from pamqp.common import FieldTable

from broker.errors import ConfigurationError, TopologyConflict
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
    retries: tuple[QueueSpec, ...]
    """`retries[n - 1]` holds the messages whose attempt n failed, until their per-message TTL sends them back."""

    def retry_queue(self, failed_attempt: int) -> QueueSpec:
        return self.retries[failed_attempt - 1]


def retry_queue_name(queue: str, failed_attempt: int) -> str:
    return f"{queue}.retry.{failed_attempt}"


QUORUM_PRIORITIES_SINCE = (4, 0)


def queue_type_arguments(settings: Settings) -> FieldTable:
    """A classic queue is a priority queue by `x-max-priority`; a quorum queue has priorities of its own from
    RabbitMQ 4.0 on (and refuses `x-max-priority`)."""
    if settings.queue_type == "quorum":
        return {"x-queue-type": "quorum"}
    return {}


def check_queue_type(settings: Settings, server_version: str) -> None:
    """Refuse a quorum queue on a broker whose quorum queues know no priorities."""
    if settings.queue_type != "quorum":
        return
    found = tuple(int(part) for part in server_version.split(".")[:2] if part.isdigit())
    if found < QUORUM_PRIORITIES_SINCE:
        raise ConfigurationError(
            f"ORDERLANE_QUEUE_TYPE=quorum needs RabbitMQ 4.0 or later, whose quorum queues have priorities; "
            f"this broker is {server_version}. Use ORDERLANE_QUEUE_TYPE=classic."
        )


def build_topology(settings: Settings) -> Topology:
    """The durable priority work queue (dead-lettering into `<queue>.dlq`), that dead-letter queue, and one
    delay queue per retry step, each dead-lettering expired messages back into the work queue.

    One queue per step because a per-message TTL only expires at the head of a queue: messages of one step
    have about the same delay, so none waits long behind another.
    """
    typed = queue_type_arguments(settings)
    priorities: FieldTable = {} if settings.queue_type == "quorum" else {"x-max-priority": settings.max_priority}
    dead_letter = QueueSpec(name=settings.dead_letter_queue, arguments=typed)
    work = QueueSpec(
        name=settings.queue,
        arguments={
            **typed,
            **priorities,
            "x-dead-letter-exchange": DEFAULT_EXCHANGE,
            "x-dead-letter-routing-key": dead_letter.name,
        },
    )
    back_to_work: FieldTable = {
        **typed,
        "x-dead-letter-exchange": DEFAULT_EXCHANGE,
        "x-dead-letter-routing-key": work.name,
    }
    retries = tuple(
        QueueSpec(name=retry_queue_name(settings.queue, attempt), arguments=back_to_work)
        for attempt in range(1, settings.max_attempts)
    )
    return Topology(work=work, dead_letter=dead_letter, retries=retries)


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
    for retry in topology.retries:
        await declare_queue(channel, retry)
    return await declare_queue(channel, topology.work)
