"""The dispatcher alone (plain asyncio, no broker): the most urgent held item next, FIFO within a level, and never
more items running than the concurrency."""

from __future__ import annotations

import asyncio

from consumers.dispatcher import Dispatcher


class Recorder:
    """A process() that records the order of starts and the most items running at once, and can be held open."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.running = 0
        self.most_running = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, item: str, held_seconds: float) -> None:
        assert held_seconds >= 0
        self.started.append(item)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.gate.wait()
            await asyncio.sleep(0)
        finally:
            self.running -= 1


def started(concurrency: int) -> tuple[Recorder, Dispatcher[str]]:
    """A dispatcher running on a recorder whose gate is closed: what starts stays running until it opens."""
    recorder = Recorder()
    recorder.gate.clear()
    dispatcher: Dispatcher[str] = Dispatcher(recorder, concurrency=concurrency)
    dispatcher.start()
    return recorder, dispatcher


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_free_slot_takes_the_most_urgent_held_item_then_the_oldest_of_a_level() -> None:
    recorder, dispatcher = started(concurrency=1)
    dispatcher.hold("first", urgency=4)
    await settle()
    for item, urgency in [("r1", 4), ("r2", 4), ("low", 0), ("vip1", 10), ("r3", 4), ("vip2", 10)]:
        dispatcher.hold(item, urgency)
    assert dispatcher.held == 6
    recorder.gate.set()
    await settle()
    assert recorder.started == ["first", "vip1", "vip2", "r1", "r2", "r3", "low"]
    dispatcher.release()
    await dispatcher.wait_finished()


async def test_never_more_running_than_the_concurrency_and_it_can_change() -> None:
    recorder, dispatcher = started(concurrency=3)
    for n in range(10):
        dispatcher.hold(f"o{n}", urgency=1)
    await settle()
    assert (dispatcher.running, dispatcher.held) == (3, 7)
    dispatcher.set_concurrency(5)
    await settle()
    assert (dispatcher.running, dispatcher.held) == (5, 5)
    dispatcher.set_concurrency(2)
    recorder.gate.set()
    await settle()
    assert recorder.most_running == 5
    assert dispatcher.held == 0 and len(recorder.started) == 10
    recorder.gate.clear()
    for n in range(6):
        dispatcher.hold(f"p{n}", urgency=1)
    await settle()
    assert dispatcher.running == 2, "surplus workers retire once free"
    recorder.gate.set()
    dispatcher.release()
    await dispatcher.wait_finished()


async def test_release_hands_back_what_is_held_and_lets_running_items_finish() -> None:
    recorder, dispatcher = started(concurrency=1)
    dispatcher.hold("running", urgency=1)
    await settle()
    for item, urgency in [("a", 1), ("b", 5), ("c", 1)]:
        dispatcher.hold(item, urgency)
    assert dispatcher.release() == ["b", "a", "c"]
    finished = asyncio.create_task(dispatcher.wait_finished())
    await settle()
    assert not finished.done()
    recorder.gate.set()
    await finished
    assert recorder.started == ["running"]


async def test_cancel_stops_running_items_and_a_bug_in_process_does_not_cost_a_slot() -> None:
    started: list[str] = []

    async def process(item: str, held_seconds: float) -> None:
        started.append(item)
        if item == "bug":
            raise RuntimeError("a bug in the ack policy")
        await asyncio.Event().wait()

    dispatcher: Dispatcher[str] = Dispatcher(process, concurrency=1)
    dispatcher.start()
    dispatcher.hold("bug", urgency=1)
    dispatcher.hold("stuck", urgency=1)
    await settle()
    assert started == ["bug", "stuck"]
    assert dispatcher.running == 1
    dispatcher.release()
    dispatcher.cancel()
    await dispatcher.wait_finished()
    assert dispatcher.running == 0


async def test_a_reserved_slot_starts_a_vip_while_every_other_slot_is_busy_and_takes_nothing_else() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    dispatcher: Dispatcher[str] = Dispatcher(recorder, concurrency=1, reserved=1, reserved_urgency=10)
    dispatcher.start()
    for item in ("r1", "r2", "r3"):
        dispatcher.hold(item, urgency=4)
    await settle()
    assert recorder.started == ["r1"], "the reserved slot takes no regular order, however many wait"
    dispatcher.hold("vip", urgency=10)
    dispatcher.hold("urgent but not vip", urgency=8)
    await settle()
    assert recorder.started == ["r1", "vip"], "the VIP starts at once, on the reserved slot"
    recorder.gate.set()
    await settle()
    assert recorder.started == ["r1", "vip", "urgent but not vip", "r2", "r3"]
    dispatcher.release()
    await dispatcher.wait_finished()
