"""Settling one channel's deliveries in batches: an ack (or reject) is recorded when the ack policy decides it
and sent at the end of the event loop's turn, together with the others of that turn.

Deliveries that finish in the same turn are mostly neighbours in delivery order, so one `basic.ack` with
`multiple` covers the longest run of settled deliveries from the oldest unsettled one; the rest go one by one.
The broker handles one frame instead of many, which a busy queue's throughput shows (docs/benchmarks.md). Nothing
is acked before the ack policy said so: a `multiple` never reaches past a delivery that is still unsettled.
"""

from __future__ import annotations

import asyncio
import enum
import logging

from aiormq.abc import AbstractChannel

from broker.connection import BROKER_ERRORS

logger = logging.getLogger(__name__)


class Settlement(enum.Enum):
    ACK = "ack"
    REQUEUE = "requeue"
    """Reject with requeue: the broker delivers it again."""


Frame = tuple[int, Settlement, bool]
"""(delivery tag, outcome, multiple)"""


def take_frames(unsettled: dict[int, Settlement | None]) -> list[Frame]:
    """The frames that send what was decided, in order, and forget those deliveries; `unsettled` holds the
    delivery tags in delivery order with the decision on each (None: not yet)."""
    frames: list[Frame] = []
    settled: list[int] = []
    run_end: int | None = None
    oldest_first = True
    for tag, outcome in unsettled.items():
        if outcome is None:
            oldest_first = False
            continue
        settled.append(tag)
        if oldest_first and outcome is Settlement.ACK:
            run_end = tag
            continue
        if run_end is not None:
            frames.append((run_end, Settlement.ACK, True))
            run_end = None
        frames.append((tag, outcome, False))
    if run_end is not None:
        frames.append((run_end, Settlement.ACK, True))
    for tag in settled:
        del unsettled[tag]
    return frames


class Acks:
    def __init__(self, channel: AbstractChannel) -> None:
        self.channel = channel
        self._unsettled: dict[int, Settlement | None] = {}
        """Delivery tags in delivery order, with what the ack policy decided (None: not yet)."""
        self._scheduled = False
        self._sending: asyncio.Task[None] | None = None

    def received(self, tag: int) -> None:
        self._unsettled[tag] = None

    def record(self, tag: int, outcome: Settlement) -> None:
        if self._unsettled.get(tag, outcome) is not None:
            return  # decided before (or never received here): a second frame for it would close the channel
        self._unsettled[tag] = outcome
        if not self._scheduled:
            # The task's first step runs on the loop's next turn, after every settle of this one.
            self._scheduled = True
            self._sending = asyncio.get_running_loop().create_task(self._send(after=self._sending))

    async def drain(self) -> None:
        """Wait until everything decided so far has been written to the connection."""
        while self._sending is not None and not self._sending.done():
            await asyncio.wait((self._sending,))

    async def _send(self, after: asyncio.Task[None] | None) -> None:
        if after is not None and not after.done():
            await asyncio.wait((after,))  # keep the frames in order
        self._scheduled = False
        frames = take_frames(self._unsettled)
        try:
            for index, (tag, outcome, multiple) in enumerate(frames, start=1):
                written = index == len(frames)  # the last one waits for the writer, so drain() means written
                if outcome is Settlement.ACK:
                    await self.channel.basic_ack(tag, multiple=multiple, wait=written)
                else:
                    await self.channel.basic_reject(tag, requeue=True, wait=written)
        except BROKER_ERRORS as exc:
            # The channel that delivered them is gone: its tags are void and the broker redelivers the messages.
            logger.warning("could not settle deliveries (%s); the broker will redeliver them", exc)
