"""What a consumer writes to the status store, and what it does while the store is away.

Orders wait for the store only where a duplicate is possible: a redelivery, or a message the API marked
(CHECK_PROCESSED_HEADER) because another copy of it may have been stored; then the store is asked whether the
order was processed before the handler runs. Otherwise an attempt costs the store one write, sent without
waiting: `processed` (or retrying, dead_lettered, expired), and `processing` only for a handler that runs long enough
for anyone to see it.

Orders are never held up by a store that is away: a transition that cannot be written is held back (the latest
one per order) and written when the store answers again; the store ignores one that arrives after a later state of
the same order (broker/status.py), so a held-back write never takes a status backwards. While it is away, the check
"already processed?" cannot be made and the handler runs: at least once, as without a store.

What this cannot repair: held-back writes are kept in memory, at most MAX_HELD_BACK of them; a process that dies
or stops while the store is still away loses those it holds, and those orders' records keep an older state until
they expire (ORDERLANE_STATUS_TTL). Both are counted and logged.

Without a store (ORDERLANE_STATUS_URL empty) the ack policy talks to NullRecorder, which asks and writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from itertools import islice
from typing import Final, Protocol

from broker.errors import StatusUnavailable
from broker.status import State, Transition, fingerprint
from broker.status_store import PAUSE_SECONDS, StatusStore
from consumers.delivery import Delivery
from consumers.metrics import ConsumerMetrics

logger = logging.getLogger(__name__)

PROCESSING_SHOWN_AFTER: Final = 0.05
"""Seconds a handler runs before its order shows `processing` (unless the delivery was checked, which writes it at
once): a handler that is done sooner costs the store one write, not two. Its `at.processing` is written anyway."""
MAX_HELD_BACK: Final = 100_000
WRITE_BACK_CHUNK: Final = 1_000
"""Held-back writes sent in one call of the store, once it is back."""


class Attempt:
    """One run of the handler on one delivery, as the status store sees it."""

    __slots__ = ("delivery", "queue", "started_at")

    def __init__(self, delivery: Delivery, queue: str, started_at: float) -> None:
        self.delivery = delivery
        self.queue = queue
        self.started_at = started_at

    def transition(self, state: State, **fields: str) -> Transition:
        """`state` now; an end state also says when processing started (it may never have been shown)."""
        delivery = self.delivery
        return Transition(
            delivery.order_id,
            state,
            attempt=delivery.attempt,
            at=time.time(),
            fields={"priority": delivery.priority, "queue": self.queue, "at:processing": self.started_at, **fields},
        )


class StatusRecorder(Protocol):
    """What the ack policy tells about each attempt: StoreRecorder writes it to the status store, NullRecorder (no
    store configured) drops it."""

    @property
    def settling(self) -> int:
        """Processed orders whose ack waits for the store's answer."""
        ...

    async def begin(self, delivery: Delivery, queue: str, body: bytes, *, check: bool) -> Attempt | None:
        """An attempt starts; None if the store says the order was processed already (do not run the handler)."""
        ...

    def end(self, attempt: Attempt) -> None:
        """The handler stopped running (returned, raised, or was cancelled): `processing` is never shown after."""
        ...

    def processed(self, attempt: Attempt, then: Callable[[], None]) -> None:
        """Record it and call `then` (the ack) once recorded: a continuation, not a cleanup; the ack waits for the
        store's answer without holding a handler slot."""
        ...

    async def retrying(self, attempt: Attempt, delay_seconds: float, error: BaseException) -> None: ...
    async def dead_lettered(self, attempt: Attempt, error: BaseException) -> None: ...

    async def expired(
        self, delivery: Delivery, queue: str, error: BaseException, attempt: Attempt | None = None
    ) -> State | None:
        """The order's deadline came before its handler could start (`attempt`: the failed one whose retry would
        start too late); the state its record had before, if the store said (`processed`: it was not expired)."""
        ...

    async def settled(self) -> None:
        """Wait for the store's answers to what was asked so far (the acks of processed orders wait on them)."""
        ...

    async def close(self) -> None: ...


class NullRecorder:
    """No status store (ORDERLANE_STATUS_URL empty): nothing is asked or written, and a processed order is acked at
    once."""

    settling: Final = 0

    async def begin(self, delivery: Delivery, queue: str, body: bytes, *, check: bool) -> Attempt | None:
        return Attempt(delivery, queue, time.time())

    def end(self, attempt: Attempt) -> None:
        pass

    def processed(self, attempt: Attempt, then: Callable[[], None]) -> None:
        then()

    async def retrying(self, attempt: Attempt, delay_seconds: float, error: BaseException) -> None:
        pass

    async def dead_lettered(self, attempt: Attempt, error: BaseException) -> None:
        pass

    async def expired(
        self, delivery: Delivery, queue: str, error: BaseException, attempt: Attempt | None = None
    ) -> State | None:
        return None

    async def settled(self) -> None:
        pass

    async def close(self) -> None:
        pass


class StoreRecorder:
    """Records processing, processed, retrying, dead_lettered and expired for the deliveries of one consumer process
    in the status store."""

    def __init__(self, store: StatusStore, metrics: ConsumerMetrics, max_held_back: int = MAX_HELD_BACK) -> None:
        self._store = store
        self._metrics = metrics
        self._max_held_back = max_held_back
        self.settling = 0
        """Processed orders whose ack waits for the store's answer."""
        self._held_back: dict[str, Transition] = {}
        self._writing_back: asyncio.Task[None] | None = None
        self._unshown: dict[Attempt, None] = {}
        """Attempts running but not shown as `processing` yet, oldest first."""
        self._showing: asyncio.Task[None] | None = None
        metrics.status_held_back.set_function(lambda: len(self._held_back))

    async def begin(self, delivery: Delivery, queue: str, body: bytes, *, check: bool) -> Attempt | None:
        """An attempt starts. With `check` (a redelivery, or a copy of which another may have been stored), the
        store is asked first: None if the order was processed already (do not run the handler). Without, nothing
        waits: `processing` is written only if the handler is still running after PROCESSING_SHOWN_AFTER."""
        attempt = Attempt(delivery, queue, time.time())
        if not check:
            self._unshown[attempt] = None
            if self._showing is None:
                self._showing = asyncio.create_task(self._show_long_runners())
            return attempt
        transition = attempt.transition("processing")
        try:
            previous = await self._store.record(transition, fingerprint(body))
        except StatusUnavailable:
            self._hold_back(transition)
            return attempt
        return None if previous == "processed" else attempt

    def end(self, attempt: Attempt) -> None:
        """Stop showing it: an attempt not shown as `processing` yet never will be (a checked one was already)."""
        self._unshown.pop(attempt, None)

    def processed(self, attempt: Attempt, then: Callable[[], None]) -> None:
        """Record it, and call `then` (the ack) once the store has it, or at once if it is away: the order is not
        held up, and no task waits for the answer."""
        transition = attempt.transition("processed")
        self.settling += 1
        written = partial(self._processed_written, transition, then)  # fewer objects for the collector than a closure
        self._record_then(transition, written)

    def _processed_written(self, transition: Transition, then: Callable[[], None], stored: bool) -> None:
        self.settling -= 1
        if stored:
            if self._held_back:
                self._held_back.pop(transition.order_id, None)
        else:
            self._hold_back(transition)
        then()

    async def settled(self) -> None:
        await self._store.settled()

    async def retrying(self, attempt: Attempt, delay_seconds: float, error: BaseException) -> None:
        transition = attempt.transition("retrying", last_error=describe_error(error))
        transition.fields["next_try_at"] = transition.at + delay_seconds
        await self._record(transition)

    async def dead_lettered(self, attempt: Attempt, error: BaseException) -> None:
        await self._record(attempt.transition("dead_lettered", last_error=describe_error(error)))

    async def expired(
        self, delivery: Delivery, queue: str, error: BaseException, attempt: Attempt | None = None
    ) -> State | None:
        """Record `expired`, waiting for the store's answer: a record already `processed` keeps its state (the
        store's script), and the state it had is returned, so that a late copy of a processed order is acked, not
        dead-lettered. While the store is away the write is held back and None returned."""
        last_error = describe_error(error)
        if attempt is not None:
            transition = attempt.transition("expired", last_error=last_error)
        else:  # never started: the last attempt made is the one before (none for a first delivery)
            fields: dict[str, str | int | float] = {"priority": delivery.priority, "queue": queue}
            fields["last_error"] = last_error
            transition = Transition(delivery.order_id, "expired", delivery.attempt - 1, time.time(), fields)
        return await self._record(transition)

    async def close(self) -> None:
        """Write back what is held, if the store answers within a pause; say what is left."""
        for task in (self._writing_back, self._showing):
            if task is not None:
                task.cancel()
        if self._held_back:
            try:
                await self._write_back()
            except StatusUnavailable:
                logger.warning(
                    "stopping with %d order statuses not written (the status store is away): those records keep "
                    "an older state until they expire",
                    len(self._held_back),
                )
                self._metrics.status_dropped.inc(len(self._held_back))

    async def _show_long_runners(self) -> None:
        """Every half PROCESSING_SHOWN_AFTER, write `processing` for the attempts running longer than that: one
        sweep for all of them, not a timer per order."""
        while True:
            await asyncio.sleep(PROCESSING_SHOWN_AFTER / 2)
            shown_before = time.time() - PROCESSING_SHOWN_AFTER
            while self._unshown:
                attempt = next(iter(self._unshown))
                if attempt.started_at > shown_before:
                    break
                del self._unshown[attempt]
                self._show(attempt.transition("processing"))

    def _show(self, transition: Transition) -> None:
        def written(stored: bool) -> None:
            if not stored:
                self._hold_back(transition)

        self._record_then(transition, written)

    def _record_then(self, transition: Transition, written: Callable[[bool], None]) -> None:
        try:
            self._store.record_then(transition, written)
        except StatusUnavailable:
            written(False)

    async def _record(self, transition: Transition) -> State | None:
        """Write it, or hold it back while the store is away; the state the record had before, if the store said."""
        try:
            previous = await self._store.record(transition)
        except StatusUnavailable:
            self._hold_back(transition)
            return None
        self._held_back.pop(transition.order_id, None)
        return previous

    def _hold_back(self, transition: Transition) -> None:
        self._held_back.pop(transition.order_id, None)  # re-inserted last: the dict stays oldest first
        if len(self._held_back) >= self._max_held_back:
            oldest = next(iter(self._held_back))
            del self._held_back[oldest]
            self._metrics.status_dropped.inc()
        self._held_back[transition.order_id] = transition
        if self._writing_back is None or self._writing_back.done():
            self._writing_back = asyncio.create_task(self._write_back_when_answered())

    async def _write_back_when_answered(self) -> None:
        while self._held_back:
            await asyncio.sleep(PAUSE_SECONDS)
            try:
                await self._write_back()
            except StatusUnavailable:
                continue
            logger.info("order statuses written back after the status store was away")

    async def _write_back(self) -> None:
        """Send the held-back writes, oldest first, a chunk per call; raise StatusUnavailable if the store fails."""
        while self._held_back:
            chunk = list(islice(self._held_back.values(), WRITE_BACK_CHUNK))
            await asyncio.gather(*(self._store.record(transition) for transition in chunk))
            for transition in chunk:
                if self._held_back.get(transition.order_id) is transition:
                    del self._held_back[transition.order_id]


def describe_error(error: BaseException) -> str:
    """`Type: message`, at most 500 characters, and valid UTF-8 whatever the message held."""
    text = f"{type(error).__name__}: {error}"[:500]
    return text.encode("utf-8", "replace").decode("utf-8")
