"""One run of the handler on one order, as the consumer makes it: shared by the ack policy and the test kit.

The run sets the delivery a handler reads with `current_delivery()`, waits for a free thread first for a plain
function (consumers/threads.py: waiting for a thread is not the handler's time), applies ORDERLANE_HANDLER_TIMEOUT
through the Deadlines watchdog (one timer for every handler, not one per delivery), and returns what the handler
raised instead of raising it: the decision (consumers/decisions.py) is made from that.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from broker.messages import OrderBase
from consumers.deadlines import Deadlines
from consumers.delivery import Delivery, Handler, delivering
from consumers.threads import InThreads


class Invoker:
    """Runs `handler` within `deadlines`; `observe`, if given, gets each run's time in seconds."""

    def __init__(self, handler: Handler, deadlines: Deadlines, observe: Callable[[float], None] | None = None) -> None:
        self.handler = handler
        self.deadlines = deadlines
        self._observe = observe

    async def run(self, order: OrderBase, delivery: Delivery) -> Exception | None:
        """Run the handler on `order` as `delivery`; return what it raised (a TimeoutError if it overran its
        deadline), or None. A cancellation that is not the deadline's (a forced stop) propagates: the caller
        leaves the message unacked."""
        task = asyncio.current_task()
        assert task is not None
        deadlines = self.deadlines
        with delivering(delivery):
            if isinstance(self.handler, InThreads):
                await self.handler.free_thread()  # before the deadline: waiting for a thread is not the handler's
            started = time.perf_counter()
            deadlines.arm(task)
            failure: Exception | None = None
            try:
                await self.handler(order)
            except asyncio.CancelledError:
                if not deadlines.disarm(task):
                    raise
                if task.uncancel() > 0:  # cancelled by a stop as well, not only by the watchdog: stay unacked
                    raise
                failure = TimeoutError(f"the handler ran longer than ORDERLANE_HANDLER_TIMEOUT={deadlines.seconds:g}s")
            except Exception as exc:
                failure = exc
            finally:
                if deadlines.disarm(task):  # it returned or raised, swallowing the watchdog's cancellation
                    task.uncancel()
                if self._observe is not None:
                    self._observe(time.perf_counter() - started)
        return failure
