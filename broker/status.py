"""An order's status as the API and the consumers record it, and the order in which states may follow each other.

    pending ──→ accepted → processing (attempt 1) ──────────────────────→ processed
      ↓ ↑ a retry of the POST         ↓ ↑
    unconfirmed             retrying (attempt n, next try at, last error) → dead_lettered → replayed → ...

    accepted, replayed, retrying, processing ──→ expired (its deadline came first) → replayed → ...

`pending` is the API's reservation while it publishes: the broker has not confirmed the order yet, so the order is
not accepted. `unconfirmed`: the broker did not confirm it (a 503), so it may or may not be stored; a retry of the
same order may publish it again, marked for the consumer to check.

`expired`: a consumer took the order after its deadline (from a work queue, or back from a delay queue), or an
attempt failed and its retry would start after it (docs/deadlines.md); the order is dead-lettered, never processed
late.

Each transition carries a rank; a write whose rank is below the record's is ignored, so statuses only move forward
(a retry's `processing` of attempt 2 is never overwritten by attempt 1's `retrying` arriving late).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from pydantic import BaseModel

State = Literal[
    "pending", "unconfirmed", "accepted", "processing", "retrying", "processed", "dead_lettered", "expired", "replayed"
]

FINAL_RANK: Final = 1_000_000
"""processed, dead_lettered and expired: nothing but a replay comes after them (and `expired` never overwrites
`processed`: broker/status.lua)."""
RANK_ACCEPTED: Final = 1
"""accepted and replayed: waiting in a work queue."""


def rank_of(state: State, attempt: int) -> int:
    """Where a transition stands: pending 0, waiting 1, then processing 2n and retrying 2n+1 for attempt n."""
    if state in ("pending", "unconfirmed"):
        return 0
    if state in ("accepted", "replayed"):
        return RANK_ACCEPTED
    if state == "processing":
        return 2 * attempt
    if state == "retrying":
        return 2 * attempt + 1
    return FINAL_RANK


def fingerprint(body: bytes) -> str:
    """What tells two orders with the same order_id apart: a digest of the order as published (its canonical JSON,
    so a default left out and the same default written out are the same order)."""
    return hashlib.blake2b(body, digest_size=16).hexdigest()


class OrderStatus(BaseModel):
    """`GET /orders/{order_id}`: where the order is. `at` holds when it entered each state it went through (the
    latest time for a state entered more than once), as ISO 8601 UTC."""

    order_id: str
    state: State
    priority: int | None = None
    """The effective priority, 0 (most urgent) to 9."""
    queue: str | None = None
    attempt: int | None = None
    """The attempt being processed, retried or that was last (1 is the first)."""
    next_try_at: datetime | None = None
    last_error: str | None = None
    """retrying: why the last attempt failed. dead_lettered, expired: why the order was given up."""
    expected_start: datetime | None = None
    """When its handler was expected to start, estimated when it was accepted (broker/estimates.py)."""
    at: dict[State, datetime] = {}

    @classmethod
    def from_record(cls, order_id: str, record: dict[str, str]) -> OrderStatus:
        """Read a record as the store keeps it (every value a string; times in seconds since the epoch)."""
        return cls.model_validate(
            {
                "order_id": order_id,
                "state": record["state"],
                "priority": _int(record.get("priority")),
                "queue": record.get("queue") or None,
                "attempt": _int(record.get("attempt")),
                "next_try_at": _time(record.get("next_try_at")),
                "last_error": record.get("last_error") or None,
                "expected_start": _time(record.get("expected_start")),
                "at": dict(sorted(_times(record), key=lambda item: item[1])),
            }
        )


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change of one order, as it is written to the store."""

    order_id: str
    state: State
    attempt: int
    """0 while waiting in a queue (accepted, replayed)."""
    at: float
    """Seconds since the epoch."""
    fields: dict[str, str | int | float]
    """What else the record gets: priority, queue, next_try_at, last_error."""

    @property
    def rank(self) -> int:
        return rank_of(self.state, self.attempt)

    def fields_to_write(self) -> list[str]:
        """The record's fields this transition writes, as names and values one after the other (HSET's arguments).
        Waiting in a queue (accepted, replayed) has no attempt.

        Every value is a string, as the record keeps it: a number would reach the store's script as a Lua number,
        which Redis turns back into a string for HSET; that conversion and the JSON number's parsing were a fifth to
        two fifths of Redis's CPU for a `processed` write (docs/benchmarks.md)."""
        state, attempt = self.state, self.attempt
        shown = str(attempt) if attempt > 0 else ""
        written = ["state", state, "rank", str(rank_of(state, attempt)), "attempt", shown, "at:" + state, str(self.at)]
        for name, value in self.fields.items():
            written += (name, value if isinstance(value, str) else str(value))
        return written


def _times(record: dict[str, str]) -> list[tuple[str, datetime]]:
    """The record's `at:<state>` fields, as (state, time)."""
    return [
        (name.removeprefix("at:"), datetime.fromtimestamp(float(value), UTC))
        for name, value in record.items()
        if name[:3] == "at:"
    ]


def _int(value: str | None) -> int | None:
    return int(value) if value else None


def _time(value: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC) if value else None
