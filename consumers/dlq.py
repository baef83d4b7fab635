"""The dead-letter queue, for operators: look at what failed and why, send it back for another go, or drop it.

Looking and choosing happen on a channel of the command's own that never acks what it did not act on: when that
channel closes, the broker puts every such message back in its place, so the queue keeps its order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from broker.connection import Broker
from broker.errors import DeadlinePassed, PublishError, StatusUnavailable
from broker.headers import (
    ATTEMPTS_HEADER,
    DEAD_LETTERED_AT_HEADER,
    ERROR_HEADER,
    ERROR_TYPE_HEADER,
    PRIORITY_HEADER,
    int_header,
)
from broker.priority import PRIORITIES
from broker.publisher import publish_confirmed
from broker.settings import Settings
from broker.status import State, Transition
from broker.status_store import StatusStore
from consumers.retry import replay_message

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    message_id: str
    priority: int | None
    attempts: int | None
    error_type: str
    error: str
    dead_lettered_at: str
    body: bytes = field(repr=False)

    @classmethod
    def of(cls, message: AbstractIncomingMessage) -> DeadLetter:
        headers = message.headers

        def text(name: str) -> str:
            value = headers.get(name)
            return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "-")

        return cls(
            message_id=message.message_id or "-",
            priority=int_header(headers, PRIORITY_HEADER, -1) if PRIORITY_HEADER in headers else None,
            attempts=int_header(headers, ATTEMPTS_HEADER, -1) if ATTEMPTS_HEADER in headers else None,
            error_type=text(ERROR_TYPE_HEADER),
            error=text(ERROR_HEADER),
            dead_lettered_at=text(DEAD_LETTERED_AT_HEADER),
            body=message.body,
        )


@dataclass(frozen=True, slots=True)
class _Held:
    """The dead-letter queue on a channel of its own, and how many messages it held when it was opened."""

    queue: AbstractQueue
    count: int

    async def fetch(self, most: int | None = None) -> AsyncIterator[AbstractIncomingMessage]:
        """The oldest messages one by one, left unacked: at most `most`, and never more than the `count` there were
        at the start, so that a letter dead-lettered again while this runs (a replayed order that failed at once)
        is not met twice."""
        for _ in range(self.count if most is None else min(most, self.count)):
            message = await self.queue.get(fail=False)
            if message is None:
                return
            yield message


@asynccontextmanager
async def _held_dead_letters(broker: Broker, settings: Settings) -> AsyncIterator[_Held]:
    """What is fetched through it and not acked goes back to the queue, in its place, on the way out."""
    channel = await broker.connection.channel(publisher_confirms=False)
    try:
        queue = await channel.get_queue(settings.dead_letter_queue)
        yield _Held(queue, queue.declaration_result.message_count or 0)
    finally:
        await channel.close()


async def peek_dead_letters(broker: Broker, settings: Settings, limit: int) -> tuple[list[DeadLetter], int]:
    """Up to `limit` dead letters, oldest first, and how many the queue holds. They stay in the queue."""
    async with _held_dead_letters(broker, settings) as held:
        return [DeadLetter.of(message) async for message in held.fetch(limit)], held.count


async def find_dead_letters(broker: Broker, settings: Settings, order_ids: Collection[str]) -> list[DeadLetter]:
    """Every dead letter whose message_id is one of `order_ids`, oldest first, wherever it is in the queue. The
    queue is read to its end and left as it was."""
    async with _held_dead_letters(broker, settings) as held:
        return [DeadLetter.of(message) async for message in held.fetch() if message.message_id in order_ids]


async def replay_dead_letters(
    broker: Broker, settings: Settings, limit: int, status: StatusStore | None = None
) -> list[str]:
    """Send the oldest `limit` dead letters back (`_replay`); the message_ids replayed."""
    async with _held_dead_letters(broker, settings) as held:
        return await _replay_each(broker, settings, held.fetch(limit), status)


async def replay_orders(
    broker: Broker, settings: Settings, order_ids: Collection[str], status: StatusStore | None = None
) -> list[str]:
    """Send back (`_replay`) exactly the dead letters whose message_id is one of `order_ids`, wherever they are in
    the queue; the others stay, in their order. The message_ids replayed, one per letter: an id missing from them
    was not in the queue."""
    async with _held_dead_letters(broker, settings) as held:
        wanted = (message async for message in held.fetch() if message.message_id in order_ids)
        return await _replay_each(broker, settings, wanted, status)


async def purge_dead_letters(broker: Broker, settings: Settings) -> int:
    """Drop every dead letter; how many there were. The orders' statuses stay `dead_lettered`: a purge forgets
    the messages, not what happened to them."""
    queue = await broker.channel.get_queue(settings.dead_letter_queue)
    purged = await queue.purge()
    assert purged is not None  # None only with no_wait=True
    return purged.message_count or 0


async def _replay_each(
    broker: Broker, settings: Settings, messages: AsyncIterator[AbstractIncomingMessage], status: StatusStore | None
) -> list[str]:
    replayed: list[str] = []
    async for message in messages:
        await _replay(broker, settings, message, status)
        replayed.append(message.message_id or "-")
    return replayed


async def _replay(
    broker: Broker, settings: Settings, message: AbstractIncomingMessage, status: StatusStore | None
) -> None:
    """Move one dead letter back to the work queue of its priority's lane (same priority, attempt count reset),
    acked in the dead-letter queue only after the broker confirmed its copy there. With a status store, the order
    is `replayed` there first, so that what a consumer records of the new round comes after it; if the publish
    fails, its record is dead-lettered again (best effort both: the order moves, or stays, whether or not the
    store answers)."""
    priority = int_header(message.headers, PRIORITY_HEADER, -1)
    lane = broker.topology.lane_for_header(priority)
    order_id = message.message_id if status is not None else None
    if status is not None and order_id:
        fields: dict[str, str | int | float] = {"queue": lane.work.name, "next_try_at": "", "last_error": ""}
        if priority in PRIORITIES:
            fields["priority"] = priority
        replayed = Transition(order_id, "replayed", attempt=0, at=time.time(), fields=fields)
        await _best_effort(status.replay(replayed), order_id)
    try:
        copy = replay_message(message)
        await publish_confirmed(
            broker.channel, copy.body, copy.properties, queue=lane.work.name, confirm_within=settings.publish_timeout
        )
    except PublishError:
        await message.nack(requeue=True)
        if status is not None and order_id:
            letter = DeadLetter.of(message)
            again: dict[str, str | int | float] = {"last_error": f"{letter.error_type}: {letter.error}"}
            state: State = "expired" if letter.error_type == DeadlinePassed.__name__ else "dead_lettered"
            dead = Transition(order_id, state, letter.attempts or 0, time.time(), again)  # back as it was
            await _best_effort(status.record(dead), order_id)
        raise
    await message.ack()


async def _best_effort(write: Awaitable[object], order_id: str) -> None:
    try:
        await write
    except StatusUnavailable:
        logger.warning("the status store is away: this order's status says otherwise", extra={"order_id": order_id})
