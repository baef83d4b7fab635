"""Tables for the terminal, as the operator commands print them."""

from __future__ import annotations

from collections.abc import Sequence

from broker.queues import QueueStats
from consumers.dlq import DeadLetter


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart; the last column is left ragged."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]) for row in rows
    )


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)


def format_queue_stats(stats: Sequence[QueueStats]) -> str:
    rows = [("queue", "messages", "consumers")]
    rows += [(s.queue, "missing" if s.messages is None else str(s.messages), _or_dash(s.consumers)) for s in stats]
    return format_table(rows)


def format_dead_letters(letters: Sequence[DeadLetter], total: int, queue: str) -> str:
    rows = [("message_id", "priority", "attempts", "error_type", "dead_lettered_at", "error")]
    rows += [
        (
            letter.message_id,
            _or_dash(letter.priority),
            _or_dash(letter.attempts),
            letter.error_type,
            letter.dead_lettered_at,
            letter.error,
        )
        for letter in letters
    ]
    return format_table(rows) + f"\n{len(letters)} shown of {total} in {queue}"
