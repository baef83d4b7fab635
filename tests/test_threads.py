"""Plain functions as handlers (consumers/threads.py), on the real broker: in threads, bounded, and what a timeout
means for a thread that cannot be cancelled."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from broker.connection import Broker
from broker.messages import Order
from broker.settings import Settings
from consumers.delivery import current_delivery
from consumers.runner import Consumer
from consumers.threads import InThreads, as_handler
from tests.amqp import depth_is, publish_raw, queue_depth, wait_until
from tests.consuming import order_message
from tests.processes import environment, read_until, start
from tests.recording import RECORD_FILE, recorded


class Blocking:
    """A plain function that holds each call until `release` is set, counting the calls under way."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0
        self.finished: list[tuple[str, int, str]] = []
        """(order_id, attempt, thread name) of each call that returned."""

    def __call__(self, order: Order) -> None:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        self.release.wait()
        with self.lock:
            self.running -= 1
            self.finished.append((order.order_id, current_delivery().attempt, threading.current_thread().name))


async def test_a_plain_function_runs_in_the_pools_threads_never_more_at_once_and_its_orders_are_acked(
    broker: Broker, settings: Settings
) -> None:
    function = Blocking()
    handler = InThreads(function, threads=3)
    await publish_raw(settings.queue, *(order_message(f"p-{n}") for n in range(10)))
    consumer = Consumer(broker, handler, settings, prefetch=6, concurrency=6)  # more slots than threads
    await consumer.start()
    try:
        await wait_until(lambda: function.running == 3, what="three calls under way")
        function.release.set()
        await wait_until(lambda: len(function.finished) == 10, what="every order handled")
    finally:
        function.release.set()
        await consumer.stop(grace_seconds=5)
        handler.close()
    assert function.most_at_once == 3, "no more calls at once than threads, whatever the consumer's concurrency"
    assert {thread for _, _, thread in function.finished} <= {f"orderlane-handler-{n}" for n in range(3)}
    assert sorted(order_id for order_id, _, _ in function.finished) == sorted(f"p-{n}" for n in range(10))
    assert await queue_depth(settings.queue) == 0, "each acked after its function returned"


async def test_a_function_past_its_deadline_is_retried_while_its_thread_is_left_to_finish(
    broker: Broker, settings: Settings
) -> None:
    """The first call blocks past ORDERLANE_HANDLER_TIMEOUT: at the deadline the attempt fails and the order goes
    to the retry path; its retry runs in another thread while the first still holds its own; the first's result,
    when it comes, changes nothing."""
    quick = settings.model_copy(update={"handler_timeout": 0.5})
    first_call = threading.Event()
    release = threading.Event()
    attempts: list[int] = []

    def stuck_once(order: Order) -> None:
        attempts.append(current_delivery().attempt)
        if not first_call.is_set():
            first_call.set()
            release.wait()
            raise RuntimeError("too late to matter")

    handler = InThreads(stuck_once, threads=2)
    await publish_raw(settings.queue, order_message("slow-1"))
    consumer = Consumer(broker, handler, quick, prefetch=2, concurrency=2)
    await consumer.start()
    try:
        await wait_until(lambda: attempts == [1, 2], what="the retry, while the first call is still stuck")
        assert handler.overrunning == 1
        await wait_until(lambda: consumer.in_flight == 0, what="the retry acked")
        release.set()
        await wait_until(lambda: handler.overrunning == 0, what="the abandoned thread back in the pool")
    finally:
        release.set()
        await consumer.stop(grace_seconds=5)
        handler.close()
    assert attempts == [1, 2], "the late failure of the abandoned call did not start another attempt"
    assert await depth_is(settings.queue, 0)
    assert await depth_is(f"{settings.queue}.dlq", 0)


def test_an_async_handler_is_kept_and_a_plain_one_gets_the_concurrency_in_threads() -> None:
    async def coroutine_handler(order: Order) -> None:
        """An async handler."""

    def plain(order: Order) -> None:
        """A plain one."""

    assert as_handler(coroutine_handler, "auto") == (coroutine_handler, "auto")
    threaded, concurrency = as_handler(plain, 5)
    assert isinstance(threaded, InThreads)
    assert (threaded.threads, concurrency) == (5, 5)
    threaded.close()


async def test_python_m_consumers_runs_a_plain_function_as_its_handler(
    broker: Broker, settings: Settings, tmp_path: Path
) -> None:
    record_file = tmp_path / "record"
    await publish_raw(settings.queue, *(order_message(f"s-{n}") for n in range(20)))
    env = environment(settings, **{RECORD_FILE: str(record_file)})
    args = ("--handler", "tests.recording:record_in_a_thread", "--concurrency", "3")
    consumer = await start("consumers", *args, env=env)
    lines: list[str] = []
    try:
        await read_until(consumer, "consumer ready", 1, lines)
        await wait_until(lambda: len(recorded(record_file)) == 20, what="every order recorded")
        await wait_until(lambda: depth_is(settings.queue, 0), what="every order acked")
    finally:
        consumer.terminate()
        await consumer.wait()
    assert any("the handler is synchronous: it runs in 3 threads" in line for line in lines), "".join(lines)
    assert recorded(record_file) == {f"s-{n}": 1 for n in range(20)}


class NotingWaits(InThreads):
    """InThreads that notes each delivery that asks for a thread, and each given up on while it waited for one."""

    def __init__(self, function: Callable[[Order], None], threads: int) -> None:
        super().__init__(function, threads)
        self.asked: list[tuple[str, int]] = []
        self.given_up_waiting: list[tuple[str, int]] = []

    async def free_thread(self) -> None:
        delivery = current_delivery()
        self.asked.append((delivery.order_id, delivery.attempt))
        try:
            await super().free_thread()
        except asyncio.CancelledError:
            self.given_up_waiting.append((delivery.order_id, delivery.attempt))
            raise


async def a_deadline_armed_now_fires(consumer: Consumer) -> None:
    """Arm a deadline of the consumer's own watchdog now and wait until it fires: by then every deadline armed before
    it has fired too (a sweep cancels every task past its deadline). The consumer has no public seam for it."""
    deadlines = consumer._policy.deadlines
    probe = asyncio.create_task(asyncio.Event().wait())
    deadlines.arm(probe)
    await asyncio.wait([probe], timeout=30)
    probe.cancel()
    assert deadlines.disarm(probe), "the consumer's watchdog fired the probe's deadline"


async def test_orders_waiting_behind_a_thread_that_overran_are_not_failed_for_the_wait(
    broker: Broker, settings: Settings
) -> None:
    """One thread, held by a call that overran: the orders that come next wait for it past their own deadline,
    and run, on their first attempt, once the thread is free. Their wait is not the handler's time."""
    quick = settings.model_copy(update={"handler_timeout": 0.3})
    release = threading.Event()
    calls: list[tuple[str, int]] = []

    def stuck_first(order: Order) -> None:
        calls.append((order.order_id, current_delivery().attempt))
        if order.order_id == "stuck" and current_delivery().attempt == 1:
            release.wait()

    handler = NotingWaits(stuck_first, threads=1)
    await publish_raw(settings.queue, order_message("stuck"))
    # Two slots: the healthy order is taken in whether or not the stuck one's retry is back first.
    consumer = Consumer(broker, handler, quick, prefetch=2, concurrency=2)
    await consumer.start()
    try:
        await wait_until(lambda: handler.overrunning == 1, what="the first call past its deadline")
        await publish_raw(settings.queue, order_message("healthy"))
        await wait_until(lambda: ("healthy", 1) in handler.asked, what="the next order waiting for the held thread")
        await a_deadline_armed_now_fires(consumer)  # and so would the healthy order's, were its wait counted
        assert calls == [("stuck", 1)], "nothing ran while the only thread was held"
        assert handler.given_up_waiting == [], "no order was given up on while it waited for the thread"
        assert await depth_is(f"{settings.queue}.dlq", 0)
        release.set()
        await wait_until(lambda: len(calls) == 3, what="the waiting orders run once the thread is free")
    finally:
        release.set()
        await consumer.stop(grace_seconds=5)
        handler.close()
    assert ("healthy", 1) in calls, f"the order that waited was not failed for it: {calls}"
    assert await depth_is(f"{settings.queue}.dlq", 0)


def test_an_async_handler_under_a_plain_decorator_is_still_async() -> None:
    async def handler(order: Order) -> None:
        """An async handler."""

    @functools.wraps(handler)
    def logged(order: Order) -> Coroutine[Any, Any, None]:
        return handler(order)

    assert as_handler(logged, 4) == (logged, 4)


async def test_a_coroutine_a_plain_function_returns_is_awaited_not_dropped(broker: Broker, settings: Settings) -> None:
    ran: list[str] = []

    async def record(order: Order) -> None:
        ran.append(order.order_id)

    handler = InThreads(lambda order: record(order), threads=1)  # undecorated: only the result says it is async
    await publish_raw(settings.queue, order_message("c-1"))
    consumer = Consumer(broker, handler, settings, prefetch=1, concurrency=1)
    await consumer.start()
    try:
        await wait_until(lambda: ran == ["c-1"], what="the coroutine's body run")
    finally:
        await consumer.stop(grace_seconds=5)
        handler.close()
    assert await depth_is(settings.queue, 0)
