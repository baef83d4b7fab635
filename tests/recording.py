"""A handler for consumer processes started by tests: `--handler tests.recording:record` (async) or
`tests.recording:record_in_a_thread` (a plain function).

Appends `order_id attempt redelivered` to the file named by ORDERLANE_TEST_RECORD_FILE, one line per order it
finished, after ORDERLANE_SIMULATED_WORK_MS of work. A line written is an order the handler completed; whether
it was also acked is what the broker's queue depth tells.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from functools import cache
from pathlib import Path
from typing import TextIO

from broker.messages import Order
from consumers.delivery import current_delivery

RECORD_FILE = "ORDERLANE_TEST_RECORD_FILE"
WORK_MS = "ORDERLANE_SIMULATED_WORK_MS"


async def record(order: Order) -> None:
    work_ms = float(os.environ.get(WORK_MS, "0"))
    if work_ms:
        await asyncio.sleep(work_ms / 1000)
    delivery = current_delivery()
    _record_file().write(f"{order.order_id} {delivery.attempt} {int(delivery.redelivered)}\n")


def record_in_a_thread(order: Order) -> None:
    """`record` as a plain function, which `python -m consumers` runs in its handler threads."""
    delivery = current_delivery()
    _record_file().write(f"{order.order_id} {delivery.attempt} {int(delivery.redelivered)}\n")


@cache
def _record_file() -> TextIO:
    """Opened once per process, line-buffered: each line is on disk before the handler returns (and acks)."""
    return Path(os.environ[RECORD_FILE]).open("a", buffering=1)


def recorded(*paths: Path) -> Counter[str]:
    """How many times each order id was processed, over the record files of several processes."""
    counts: Counter[str] = Counter()
    for path in paths:
        if path.exists():
            counts.update(line.split()[0] for line in path.read_text().splitlines() if line)
    return counts


def redelivered(path: Path) -> int:
    return sum(line.endswith(" 1") for line in path.read_text().splitlines()) if path.exists() else 0
