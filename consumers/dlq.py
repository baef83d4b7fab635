"""The dead-letter queue, for operators: look at what failed and why, and send it back for another go."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass

from aio_pika.abc import AbstractIncomingMessage

from broker.connection import Broker
from broker.errors import PublishError, StatusUnavailable
from broker.priority import PRIORITIES
from broker.publisher import PRIORITY_HEADER, publish_confirmed
from broker.settings import Settings
from broker.status import Transition
from broker.status_store import StatusStore
from consumers.delivery import int_header
from consumers.retry import ATTEMPTS_HEADER, DEAD_LETTERED_AT_HEADER, ERROR_HEADER, ERROR_TYPE_HEADER, replay_message

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    message_id: str
    priority: int | None
    attempts: int | None
    error_type: str
    error: str
    dead_lettered_at: str

    @classmethod
    def of(cls, message: AbstractIncomingMessage) -> DeadLetter:
        def text(name: str) -> str:
            value = message.headers.get(name)
            return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "-")

        return cls(
            message_id=message.message_id or "-",
            priority=int_header(message, PRIORITY_HEADER, -1) if PRIORITY_HEADER in message.headers else None,
            attempts=int_header(message, ATTEMPTS_HEADER, -1) if ATTEMPTS_HEADER in message.headers else None,
            error_type=text(ERROR_TYPE_HEADER),
            error=text(ERROR_HEADER),
            dead_lettered_at=text(DEAD_LETTERED_AT_HEADER),
        )


async def peek_dead_letters(broker: Broker, settings: Settings, limit: int) -> tuple[list[DeadLetter], int]:
    """Up to `limit` dead letters, oldest first, and how many the queue holds. They stay in the queue: they are
    fetched on a channel of their own that is closed unacked, which hands every one back to the broker."""
    channel = await broker.connection.channel(publisher_confirms=False)
    try:
        queue = await channel.get_queue(settings.dead_letter_queue)
        total = queue.declaration_result.message_count or 0
        letters: list[DeadLetter] = []
        while len(letters) < limit and (message := await queue.get(fail=False)) is not None:
            letters.append(DeadLetter.of(message))
        return letters, total
    finally:
        await channel.close()


async def replay_dead_letters(
    broker: Broker, settings: Settings, limit: int, status: StatusStore | None = None
) -> list[str]:
    """Move up to `limit` dead letters back to the work queue of their priority's lane (same priority, attempt
    count reset), each acked in the dead-letter queue only after the broker confirmed its copy there. With a
    status store, each order is `replayed` there first, so that what a consumer records of the new round comes
    after it; if the publish fails, its record is dead-lettered again (best effort both: the order moves, or
    stays, whether or not the store answers)."""
    queue = await broker.channel.get_queue(settings.dead_letter_queue)
    replayed: list[str] = []
    while len(replayed) < limit and (message := await queue.get(fail=False)) is not None:
        priority = int_header(message, PRIORITY_HEADER, -1)
        lane = broker.topology.lane_for_header(priority)
        order_id = message.message_id if status is not None else None
        if status is not None and order_id:
            fields: dict[str, str | int | float] = {"queue": lane.work.name, "next_try_at": "", "last_error": ""}
            if priority in PRIORITIES:
                fields["priority"] = priority
            replay = Transition(order_id, "replayed", attempt=0, at=time.time(), fields=fields)
            await _best_effort(status.replay(replay), order_id)
        try:
            copy = replay_message(message)
            await publish_confirmed(
                broker.channel,
                copy.body,
                copy.properties,
                queue=lane.work.name,
                confirm_within=settings.publish_timeout,
            )
        except PublishError:
            await message.nack(requeue=True)
            if status is not None and order_id:
                letter = DeadLetter.of(message)
                again: dict[str, str | int | float] = {"last_error": f"{letter.error_type}: {letter.error}"}
                dead = Transition(order_id, "dead_lettered", letter.attempts or 0, time.time(), again)
                await _best_effort(status.record(dead), order_id)
            raise
        await message.ack()
        replayed.append(message.message_id or "-")
    return replayed


async def _best_effort(write: Awaitable[object], order_id: str) -> None:
    try:
        await write
    except StatusUnavailable:
        logger.warning("the status store is away: this order's status says otherwise", extra={"order_id": order_id})
