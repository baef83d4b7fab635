"""The dead-letter queue, for operators: look at what failed and why, and send it back for another go."""

from __future__ import annotations

from dataclasses import dataclass

from aio_pika.abc import AbstractIncomingMessage

from broker.connection import Broker
from broker.errors import PublishError
from broker.publisher import PRIORITY_HEADER, publish_confirmed
from broker.settings import Settings
from consumers.delivery import int_header
from consumers.retry import ATTEMPTS_HEADER, DEAD_LETTERED_AT_HEADER, ERROR_HEADER, ERROR_TYPE_HEADER, replay_message


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


async def replay_dead_letters(broker: Broker, settings: Settings, limit: int) -> list[str]:
    """Move up to `limit` dead letters back to the work queue of their priority's lane (same priority, attempt
    count reset), each acked in the dead-letter queue only after the broker confirmed its copy there."""
    queue = await broker.channel.get_queue(settings.dead_letter_queue)
    replayed: list[str] = []
    while len(replayed) < limit and (message := await queue.get(fail=False)) is not None:
        lane = broker.topology.lane_for_header(int_header(message, PRIORITY_HEADER, -1))
        try:
            await publish_confirmed(
                broker.channel, replay_message(message), queue=lane.work.name, confirm_within=settings.publish_timeout
            )
        except PublishError:
            await message.nack(requeue=True)
            raise
        await message.ack()
        replayed.append(message.message_id or "-")
    return replayed
