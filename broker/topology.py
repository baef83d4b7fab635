"""The queues orderlane needs, as data, and the one idempotent declaration both processes run."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from typing import Final

import aiormq.exceptions
from aio_pika.abc import AbstractQueue, AbstractRobustChannel, AbstractRobustConnection
from pamqp.common import FieldTable

from broker.errors import ConfigurationError, TopologyConflict
from broker.priority import PRIORITIES, broker_priority
from broker.settings import LaneConfig, Settings

logger = logging.getLogger(__name__)

DEFAULT_EXCHANGE = ""


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    arguments: FieldTable = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Lane:
    """A work queue of its own for a range of effective priorities, with its own delay queues and prefetch."""

    name: str
    priorities: range
    """The effective priorities (0 most urgent) whose orders go to this lane."""
    prefetch: int | None
    """Unacked messages per consumer on this lane; None: ORDERLANE_PREFETCH (or --prefetch)."""
    work: QueueSpec
    retries: tuple[QueueSpec, ...]
    """`retries[n - 1]` holds the messages whose attempt n failed, until their per-message TTL sends them back."""

    def retry_queue(self, failed_attempt: int) -> QueueSpec:
        return self.retries[failed_attempt - 1]


@dataclass(frozen=True, slots=True)
class Topology:
    lanes: tuple[Lane, ...]
    dead_letter: QueueSpec

    def lane_for(self, effective_priority: int) -> Lane:
        for lane in self.lanes:
            if effective_priority in lane.priorities:
                return lane
        raise ValueError(f"no lane takes priority {effective_priority}")

    def lane_for_header(self, priority: int) -> Lane:
        """The lane for a priority read from an untrusted header: out of 0..9 (or absent), the least urgent."""
        return self.lane_for(priority) if priority in PRIORITIES else self.lanes[-1]

    @property
    def queues(self) -> tuple[QueueSpec, ...]:
        """Every queue, in the order an operator reads them: each lane's work queue and delay queues, then the DLQ."""
        return (*(spec for lane in self.lanes for spec in (lane.work, *lane.retries)), self.dead_letter)


def retry_queue_name(queue: str, failed_attempt: int) -> str:
    return f"{queue}.retry.{failed_attempt}"


QUORUM_SINCE: Final = (3, 8)
AT_LEAST_ONCE_DEAD_LETTERING_SINCE: Final = (3, 10)
QUORUM_PRIORITIES_SINCE: Final = (4, 0)
NEWEST: Final = (99, 0)
"""The version assumed where none is known (the in-memory broker, tests, benchmarks): every feature there."""


def parse_version(server_version: str) -> tuple[int, int]:
    """`3.10.8` → (3, 10); what cannot be read counts as the newest, so nothing is refused by mistake."""
    parts = [int(part) for part in re.findall(r"\d+", server_version)[:2]]
    return (parts[0], parts[1]) if len(parts) == 2 else NEWEST


def lane_levels(priorities: range, settings: Settings) -> FieldTable:
    """A classic work queue's `x-max-priority`: the broker priority of its lane's most urgent orders, no more. The
    broker keeps a sub-queue per level and walks them on every publish and delivery, so the least urgent lane
    (priorities 3-9 by default: levels 0-6) costs it less CPU per order than ORDERLANE_MAX_PRIORITY's 0-10 would
    (docs/priorities.md#why-few-levels-are-cheaper). Broker priorities stay the same in every lane, so a consumer
    compares deliveries of different lanes by them. No argument for a quorum queue, which refuses it, nor for a
    lane whose orders all map to level 0."""
    levels = broker_priority(priorities.start, max_priority=settings.max_priority)
    return {"x-max-priority": levels} if settings.queue_type == "classic" and levels > 0 else {}


def queue_type_arguments(settings: Settings) -> FieldTable:
    """A classic queue is a priority queue by `x-max-priority`; a quorum queue refuses that argument (before 4.0 it
    has no priorities, from 4.0 on priorities of its own)."""
    if settings.queue_type == "quorum":
        return {"x-queue-type": "quorum"}
    return {}


QUORUM_DEFAULT_DELIVERY_LIMIT_SINCE: Final = (4, 0)


def dead_letters_kept(settings: Settings, version: tuple[int, int]) -> FieldTable:
    """From 4.0 a quorum queue drops a message returned more than 20 times unless told otherwise; the dead-letter
    queue has nowhere to send it, and `orderlane dlq list|show` return every letter they read: no limit there."""
    if settings.queue_type == "quorum" and version >= QUORUM_DEFAULT_DELIVERY_LIMIT_SINCE:
        return {"x-delivery-limit": -1}
    return {}


def dead_letter_arguments(settings: Settings, routing_key: str, version: tuple[int, int]) -> FieldTable:
    """Dead-letter to `routing_key` through the default exchange. A quorum queue from 3.10 on does it at least once:
    the message leaves only once the target queue has confirmed it (which needs `x-overflow: reject-publish`);
    otherwise a node lost mid-move could drop it."""
    arguments: FieldTable = {"x-dead-letter-exchange": DEFAULT_EXCHANGE, "x-dead-letter-routing-key": routing_key}
    if settings.queue_type == "quorum" and version >= AT_LEAST_ONCE_DEAD_LETTERING_SINCE:
        arguments |= {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
    return arguments


def check_queue_type(settings: Settings, server_version: str) -> None:
    """Refuse quorum queues where the broker has none (before 3.8); say in one line when orders will be served in
    arrival order: quorum queues without priorities (before 4.0) and a single lane."""
    if settings.queue_type != "quorum":
        return
    version = parse_version(server_version)
    if version < QUORUM_SINCE:
        raise ConfigurationError(
            f"ORDERLANE_QUEUE_TYPE=quorum needs RabbitMQ 3.8 or later; this broker is {server_version}. "
            "Use ORDERLANE_QUEUE_TYPE=classic."
        )
    if version < QUORUM_PRIORITIES_SINCE and len(settings.lanes) < 2:
        logger.warning(
            "quorum queues on RabbitMQ %s have no priorities and ORDERLANE_LANES sets one lane: orders are served "
            "in arrival order, VIPs included; set lanes (the default, high:0-2,default:3-9) for priority classes",
            server_version,
        )


def build_topology(settings: Settings, server_version: str = "") -> Topology:
    """Per lane, a durable priority work queue (dead-lettering into `<queue>.dlq`) and one delay queue per retry
    step, each dead-lettering expired messages back into that lane's work queue; and the shared dead-letter queue.

    The least urgent lane's work queue is ORDERLANE_QUEUE itself, the others' `<queue>.<lane>`: with the default
    lanes (high:0-2,default:3-9) the regular orders stay in the queue a one-queue deployment had (`ORDERLANE_LANES=`,
    one lane), so an upgrade keeps its backlog. One delay queue per step, because a per-message TTL only expires at
    the head of a queue: messages of one step have about the same delay, so none waits long behind another.

    Quorum work queues carry `x-delivery-limit` (ORDERLANE_DELIVERY_LIMIT): a message whose consumer keeps dying
    before it settles goes to the dead-letter queue instead of looping. `server_version` (the broker's) decides
    what the broker can do; empty: the newest.
    """
    version = parse_version(server_version)
    typed = queue_type_arguments(settings)
    limit: FieldTable = {"x-delivery-limit": settings.delivery_limit} if settings.queue_type == "quorum" else {}
    kept = dead_letters_kept(settings, version)
    dead_letter = QueueSpec(name=settings.dead_letter_queue, arguments={**typed, **kept})
    to_dead_letters = dead_letter_arguments(settings, dead_letter.name, version)
    lanes = []
    configs = settings.lanes or (LaneConfig(name="default", first=0, last=9, prefetch=None),)
    for config in configs:
        queue = settings.queue if config is configs[-1] else f"{settings.queue}.{config.name}"
        back_to_work: FieldTable = {**typed, **dead_letter_arguments(settings, queue, version)}
        priorities = range(config.first, config.last + 1)
        levels = lane_levels(priorities, settings)
        lanes.append(
            Lane(
                name=config.name,
                priorities=priorities,
                prefetch=config.prefetch,
                work=QueueSpec(name=queue, arguments={**typed, **levels, **limit, **to_dead_letters}),
                retries=tuple(
                    QueueSpec(name=retry_queue_name(queue, attempt), arguments=back_to_work)
                    for attempt in range(1, settings.max_attempts)
                ),
            )
        )
    return Topology(lanes=tuple(lanes), dead_letter=dead_letter)


_INEQUIVALENT_ARG = re.compile(r"inequivalent arg '[^']+'")


async def declare_queue(channel: AbstractRobustChannel, spec: QueueSpec) -> AbstractQueue:
    """Declare one durable queue; a 406 for other arguments becomes a TopologyConflict naming the argument."""
    try:
        return await channel.declare_queue(spec.name, durable=True, arguments=dict(spec.arguments))
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        reason = str(exc.args[0] if exc.args else exc)
        match = _INEQUIVALENT_ARG.search(reason)
        raise TopologyConflict(spec.name, reason[match.start() :] if match else reason) from exc


_CURRENT_LEVELS = re.compile(r"inequivalent arg 'x-max-priority' .* but current is (?:the value )?'(\d+)'")
"""RabbitMQ's refusal, naming the levels the queue has: "... but current is '10'" (3.10), or "... but current is the
value '10' of type 'signedint'" (later versions)."""


async def keep_existing_levels(connection: AbstractRobustConnection, topology: Topology) -> Topology:
    """The topology, with each work queue that was declared before with more priority levels than its lane needs
    keeping them. An earlier orderlane declared every work queue with ORDERLANE_MAX_PRIORITY levels, and a queue's
    `x-max-priority` cannot change; more levels order the same broker priorities the same way, so the queue and
    its backlog are kept as they are. Fewer levels than needed stay a TopologyConflict: they would merge some."""
    lanes = []
    for lane in topology.lanes:
        levels = await more_levels(connection, lane.work)
        if levels is not None:
            logger.info("queue %r keeps the x-max-priority %d it was declared with", lane.work.name, levels)
            lane = replace(lane, work=replace(lane.work, arguments={**lane.work.arguments, "x-max-priority": levels}))
        lanes.append(lane)
    return replace(topology, lanes=tuple(lanes))


async def more_levels(connection: AbstractRobustConnection, spec: QueueSpec) -> int | None:
    """The `x-max-priority` of queue `spec` if it exists with more levels than `spec` asks for, else None: found by
    declaring it on an AMQP channel of its own, which the broker closes if it refuses."""
    transport = connection.transport
    assert transport is not None
    channel = await transport.connection.channel()
    try:
        await channel.queue_declare(spec.name, durable=True, arguments=dict(spec.arguments))
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        current = _CURRENT_LEVELS.search(str(exc))
        needed = spec.arguments.get("x-max-priority", 0)
        assert isinstance(needed, int)
        return int(current[1]) if current is not None and int(current[1]) > needed else None
    await channel.close()
    return None


async def declare_topology(channel: AbstractRobustChannel, topology: Topology) -> None:
    """Declare every queue (idempotent); the robust channel declares them again after a reconnect."""
    for spec in topology.queues:
        await declare_queue(channel, spec)
