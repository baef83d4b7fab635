"""orderlane's message headers: their names, what the publisher writes, what a retry or dead-letter copy adds and
strips, and the typed readers.

A header comes off the wire, so it is untrusted: a reader returns its default for a value of the wrong type. An int
header is an int, never a bool (AMQP tables carry both, and Python's bool is an int).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

from aio_pika.abc import HeadersType

PRIORITY_HEADER: Final = "x-orderlane-priority"
"""The order's effective priority, 0 (most urgent) to 9, as the API computed it: finer than the broker priority."""
ATTEMPT_HEADER: Final = "x-orderlane-attempt"
"""Which attempt at the order this copy is, from 1 (absent: 1): a retry copy carries the next one."""
PUBLISHED_AT_HEADER: Final = "x-orderlane-published-at"
"""When the API published it, in microseconds since the epoch, an int: the AMQP timestamp property has whole seconds
only, and a float header travels as a 32-bit float (pamqp), which is two minutes coarse at today's times."""
CHECK_PROCESSED_HEADER: Final = "x-orderlane-check-processed"
"""Set (true) on a message of which another copy may have been stored: the consumer asks the status store whether the
order was processed before it runs the handler, as it does for a redelivery."""
ERROR_TYPE_HEADER: Final = "x-orderlane-error-type"
"""On a dead letter: the class name of the error (InvalidMessage for a body that is not a valid order)."""
ERROR_HEADER: Final = "x-orderlane-error"
"""On a dead letter: the error's message, at most MAX_ERROR_LENGTH characters."""
ATTEMPTS_HEADER: Final = "x-orderlane-attempts"
"""On a dead letter: how many attempts were made."""
DEAD_LETTERED_AT_HEADER: Final = "x-orderlane-dead-lettered-at"
"""On a dead letter: when, ISO 8601 UTC to the millisecond."""
FAILURE_HEADERS: Final = (ERROR_TYPE_HEADER, ERROR_HEADER, ATTEMPTS_HEADER, DEAD_LETTERED_AT_HEADER)
"""What a dead-letter copy adds, and a replay strips."""
BROKER_HEADERS: Final = ("x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason")
"""What RabbitMQ adds when it dead-letters a message (a retry copy whose TTL ran out): no copy keeps them, the broker
adds them again."""
MAX_ERROR_LENGTH: Final = 1000


def published_headers(
    priority: int, published_at_us: int, *, check_processed: bool = False, trace: Mapping[str, str] | None = None
) -> dict[str, int | bool | str]:
    """What the publisher writes on an order's message: its effective priority and publish time, the mark to check
    the status store first when another copy may have been stored, and the headers that carry its trace."""
    headers: dict[str, int | bool | str] = {PRIORITY_HEADER: priority, PUBLISHED_AT_HEADER: published_at_us}
    if check_processed:
        headers[CHECK_PROCESSED_HEADER] = True
    if trace:
        headers.update(trace)
    return headers


def retry_headers(headers: HeadersType, next_attempt: int) -> HeadersType:
    """A retry copy's: the next attempt, marked to be checked. If the ack of this attempt is lost, the broker
    redelivers it besides the copy; whichever runs second finds the order processed and skips it."""
    return {**_own(headers), ATTEMPT_HEADER: next_attempt, CHECK_PROCESSED_HEADER: True}


def dead_letter_headers(headers: HeadersType, *, error_type: str, error: str, attempts: int) -> HeadersType:
    """A dead letter's: why it failed, after how many attempts, and when."""
    return {
        **_own(headers),
        ERROR_TYPE_HEADER: error_type,
        ERROR_HEADER: error[:MAX_ERROR_LENGTH],
        ATTEMPTS_HEADER: attempts,
        DEAD_LETTERED_AT_HEADER: datetime.now(UTC).isoformat(timespec="milliseconds"),
    }


def replay_headers(headers: HeadersType) -> HeadersType:
    """A replayed dead letter's: the failure headers gone, the attempt count reset."""
    excluded = {ATTEMPT_HEADER, *FAILURE_HEADERS}
    return {key: value for key, value in _own(headers).items() if key not in excluded}


def _own(headers: HeadersType) -> HeadersType:
    return {key: value for key, value in headers.items() if key not in BROKER_HEADERS}


def int_header(headers: Mapping[str, object], name: str, default: int) -> int:
    value = headers.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def attempt_of(headers: Mapping[str, object]) -> int:
    """The attempt a message is (1 when the header is absent); never below 1."""
    return max(1, int_header(headers, ATTEMPT_HEADER, 1))


def published_at_of(headers: Mapping[str, object]) -> float | None:
    """The publish time in seconds since the epoch, from PUBLISHED_AT_HEADER's whole microseconds; None without it.
    A float header is ignored: 128 s apart at today's times (see PUBLISHED_AT_HEADER)."""
    value = headers.get(PUBLISHED_AT_HEADER)
    return value / 1_000_000 if isinstance(value, int) and not isinstance(value, bool) else None
