"""`python -m consumers dlq list|replay`: what an operator sees and gets back."""

from __future__ import annotations

import aio_pika

from broker.connection import Broker, open_broker
from broker.publisher import ATTEMPT_HEADER, PRIORITY_HEADER
from broker.settings import LaneConfig, Settings
from consumers.retry import dead_letter_message
from tests.amqp import delete_topology, drain, publish_raw, queue_depth
from tests.consuming import order_message
from tests.processes import environment, run


async def dead_letters(settings: Settings, count: int) -> None:
    letters = [
        dead_letter_message(
            order_message(f"dead-{n}", priority=8, headers={PRIORITY_HEADER: 1, ATTEMPT_HEADER: 5}),
            error_type="ValueError",
            error=f"reason {n}",
            attempts=5,
        )
        for n in range(count)
    ]
    await publish_raw(settings.dead_letter_queue, *letters)


async def test_list_shows_reasons_and_leaves_the_letters_in_place(settings: Settings, broker: Broker) -> None:
    await dead_letters(settings, 3)
    code, stdout = await run("consumers", "dlq", "list", "--limit", "2", env=environment(settings), stdout=True)
    assert code == 0, stdout
    lines = stdout.splitlines()
    assert lines[0].split() == ["message_id", "priority", "attempts", "error_type", "dead_lettered_at", "error"]
    assert lines[1].split()[:4] == ["dead-0", "1", "5", "ValueError"] and lines[1].endswith("reason 0")
    assert lines[2].split()[0] == "dead-1"
    assert lines[-1] == f"2 shown of 3 in {settings.dead_letter_queue}"
    assert await queue_depth(settings.dead_letter_queue) == 3


async def test_replay_sends_letters_back_with_their_priority_and_a_fresh_attempt_count(
    settings: Settings, broker: Broker
) -> None:
    await dead_letters(settings, 3)
    code, stdout = await run("consumers", "dlq", "replay", "--limit", "2", env=environment(settings), stdout=True)
    assert code == 0, stdout
    assert "replayed 2 dead letters" in stdout
    assert await queue_depth(settings.dead_letter_queue) == 1
    replayed = await drain(settings.queue)
    assert [m.message_id for m in replayed] == ["dead-0", "dead-1"]
    for message in replayed:
        assert message.priority == 8
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.headers[PRIORITY_HEADER] == 1
        assert ATTEMPT_HEADER not in message.headers
        assert not any(key.startswith("x-orderlane-error") for key in message.headers)


async def test_replay_sends_a_letter_with_a_foreign_priority_to_the_least_urgent_lane(settings: Settings) -> None:
    laned = settings.model_copy(update={"lanes": (LaneConfig("high", 0, 2, None), LaneConfig("rest", 3, 9, None))})
    async with open_broker(laned):
        pass
    try:
        letter = dead_letter_message(
            aio_pika.Message(b"not an order", headers={PRIORITY_HEADER: 42}, message_id="odd"),
            error_type="InvalidMessage",
            error="not JSON",
            attempts=1,
        )
        await publish_raw(laned.dead_letter_queue, letter)
        env = environment(laned, ORDERLANE_LANES="high:0-2,rest:3-9")
        code, stdout = await run("consumers", "dlq", "replay", env=env, stdout=True)
        assert code == 0, stdout
        assert await queue_depth(f"{laned.queue}.rest") == 1
        assert await queue_depth(f"{laned.queue}.high") == 0
    finally:
        await delete_topology(laned)
