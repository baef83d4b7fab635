"""Where a message goes when it was not processed: back later through a delay queue (after the backoff of the
retry policy), or to the dead-letter queue.

Both are a republish (persistent, same priority and properties, confirmed) followed by an ack of the original,
so the broker holds the message at every moment: a crash between the two gives a duplicate, never a loss. What each
copy's headers add and strip is broker/headers.py's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol

import aio_pika
from aio_pika.abc import HeadersType

from broker.headers import dead_letter_headers, replay_headers, retry_headers
from broker.settings import Settings

JITTER: Final = 0.2


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    base_seconds: float
    max_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(settings.max_attempts, settings.retry_base_seconds, settings.retry_max_seconds)

    def should_retry(self, attempt: int) -> bool:
        return attempt < self.max_attempts

    def delay_seconds(self, failed_attempt: int, rng: random.Random) -> float:
        """Exponential backoff, base x 2^(n-1) capped at max, with +-20 % jitter so that orders which failed
        together (a database outage, say) do not all come back in the same instant."""
        delay = min(self.base_seconds * 2.0 ** (failed_attempt - 1), self.max_seconds)
        return delay * rng.uniform(1 - JITTER, 1 + JITTER)


class Copyable(Protocol):
    """What a copy keeps of a message: a delivery (consumers.received.Received) or a fetched aio-pika message."""

    @property
    def body(self) -> bytes: ...
    @property
    def headers(self) -> HeadersType: ...
    @property
    def content_type(self) -> str | None: ...
    @property
    def content_encoding(self) -> str | None: ...
    @property
    def priority(self) -> int | None: ...
    @property
    def correlation_id(self) -> str | None: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def timestamp(self) -> datetime | None: ...
    @property
    def type(self) -> str | None: ...
    @property
    def app_id(self) -> str | None: ...


def _copy(message: Copyable, headers: HeadersType, expiration: float | None = None) -> aio_pika.Message:
    """The same message (body, priority, ids, timestamp) with new headers, persistent."""
    return aio_pika.Message(
        message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=message.priority,
        correlation_id=message.correlation_id,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
        expiration=expiration,
    )


def retry_message(message: Copyable, *, next_attempt: int, delay_seconds: float) -> aio_pika.Message:
    """The copy that comes back as attempt `next_attempt` once its per-message TTL sends it to the work queue."""
    return _copy(message, retry_headers(message.headers, next_attempt), expiration=delay_seconds)


def dead_letter_message(message: Copyable, *, error_type: str, error: str, attempts: int) -> aio_pika.Message:
    """The copy for the dead-letter queue, saying why it failed."""
    headers = dead_letter_headers(message.headers, error_type=error_type, error=error, attempts=attempts)
    return _copy(message, headers)


def replay_message(message: Copyable) -> aio_pika.Message:
    """A dead letter made new: same body and priority, the failure headers gone, the attempt count reset."""
    return _copy(message, replay_headers(message.headers))
