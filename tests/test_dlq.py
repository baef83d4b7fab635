"""`orderlane dlq list|show|replay|purge` (and `python -m consumers dlq`): what an operator sees, gets back and
drops."""

from __future__ import annotations

import json
import time

import aio_pika
from prometheus_client import CollectorRegistry

from broker.connection import Broker, open_broker
from broker.headers import ATTEMPT_HEADER, PRIORITY_HEADER
from broker.settings import LaneConfig, Settings
from broker.status import Transition
from broker.status_store import open_status_store
from consumers.retry import dead_letter_message
from tests.amqp import delete_topology, drain, lane_queue, publish_raw, queue_depth
from tests.consuming import order_message
from tests.orderlane import orderlane, terminal
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
    replayed = await drain(lane_queue(settings, 1))
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
        code, stdout = await run("consumers", "dlq", "replay", env=environment(laned), stdout=True)
        assert code == 0, stdout
        assert await queue_depth(laned.queue) == 1
        assert await queue_depth(f"{laned.queue}.high") == 0
    finally:
        await delete_topology(laned)


async def dead_letter_statuses(settings: Settings, *order_ids: str) -> None:
    """Their records, as the consumer left them when it dead-lettered them."""
    async with open_status_store(settings, CollectorRegistry()) as store:
        assert store is not None
        for order_id in order_ids:
            transition = Transition(order_id, "dead_lettered", 5, time.time(), {"last_error": "ValueError: reason"})
            await store.record(transition)


async def states(settings: Settings, *order_ids: str) -> list[str | None]:
    async with open_status_store(settings, CollectorRegistry()) as store:
        assert store is not None
        return [status.state if (status := await store.get(order_id)) else None for order_id in order_ids]


async def test_replay_by_id_moves_exactly_those_and_leaves_the_rest_in_order(
    settings: Settings, broker: Broker
) -> None:
    await dead_letters(settings, 6)
    await dead_letter_statuses(settings, "dead-1", "dead-2")
    ran = await orderlane("dlq", "replay", "dead-4", "dead-1", env=environment(settings))
    assert ran.code == 0, ran.stderr
    assert ran.stdout.startswith("replayed 2 dead letters")
    assert [m.message_id for m in await drain(lane_queue(settings, 1))] == ["dead-1", "dead-4"]
    assert [m.message_id for m in await drain(settings.dead_letter_queue)] == ["dead-0", "dead-2", "dead-3", "dead-5"]
    assert await states(settings, "dead-1", "dead-2") == ["replayed", "dead_lettered"]


async def test_replay_of_an_id_not_there_names_it_and_exits_1(settings: Settings, broker: Broker) -> None:
    await dead_letters(settings, 2)
    ran = await orderlane("dlq", "replay", "dead-1", "nowhere-7", env=environment(settings))
    assert ran.code == 1
    assert ran.error == f"orderlane dlq replay: error: not in {settings.dead_letter_queue}: nowhere-7"
    assert [m.message_id for m in await drain(lane_queue(settings, 1))] == ["dead-1"]  # the ones found went back
    assert [m.message_id for m in await drain(settings.dead_letter_queue)] == ["dead-0"]


async def test_show_prints_every_letter_of_the_order_in_full_and_leaves_the_queue(
    settings: Settings, broker: Broker
) -> None:
    await dead_letters(settings, 3)
    again = dead_letter_message(
        order_message("dead-1", priority=8), error_type="TimeoutError", error="slow", attempts=2
    )
    await publish_raw(settings.dead_letter_queue, again)
    ran = await orderlane("dlq", "show", "dead-1", env=environment(settings))
    assert ran.code == 0, ran.stderr
    first, second, summary = ran.stdout.split("\n\n")
    assert first.splitlines()[:5] == [
        "message_id        dead-1",
        "priority          1",
        "reason            ValueError",
        "error             reason 1",
        "attempts          5",
    ]
    assert first.splitlines()[5].startswith("dead_lettered_at  20")
    body = first.split("body:\n")[1]
    assert json.loads(body) == {"order_id": "dead-1", "priority": 5, "user_type": "regular", "items": ["a"]}
    assert body.splitlines()[:2] == ["{", '  "order_id": "dead-1",'], "indented, a field a line"
    assert "reason            TimeoutError" in second and "attempts          2" in second
    assert summary == f"2 dead letters of dead-1 in {settings.dead_letter_queue}\n"
    assert [m.message_id for m in await drain(settings.dead_letter_queue)] == ["dead-0", "dead-1", "dead-2", "dead-1"]

    missing = await orderlane("dlq", "show", "nowhere-7", env=environment(settings))
    assert missing.code == 1
    assert (
        missing.error
        == f"orderlane dlq show: error: no dead letter of order 'nowhere-7' in {settings.dead_letter_queue}"
    )


async def test_purge_without_a_terminal_or_yes_refuses_and_leaves_the_queue(settings: Settings, broker: Broker) -> None:
    await dead_letters(settings, 3)
    ran = await orderlane("dlq", "purge", env=environment(settings))
    assert ran.code == 1
    assert "no terminal to ask on (--yes purges without asking)" in ran.error
    assert [m.message_id for m in await drain(settings.dead_letter_queue)] == ["dead-0", "dead-1", "dead-2"]


async def test_purge_yes_empties_the_queue_and_the_orders_stay_dead_lettered(
    settings: Settings, broker: Broker
) -> None:
    await dead_letters(settings, 3)
    await dead_letter_statuses(settings, "dead-0")
    ran = await orderlane("dlq", "purge", "--yes", env=environment(settings))
    assert ran.code == 0, ran.stderr
    assert ran.stdout == f"purged 3 dead letters from {settings.dead_letter_queue}\n"
    assert await queue_depth(settings.dead_letter_queue) == 0
    assert await states(settings, "dead-0") == ["dead_lettered"]


async def test_purge_on_a_terminal_asks_and_does_only_what_was_answered(settings: Settings, broker: Broker) -> None:
    await dead_letters(settings, 2)
    question = f"purge 2 dead letters from {settings.dead_letter_queue}? [y/N] "
    with terminal("n\n") as stdin:
        declined = await orderlane("dlq", "purge", env=environment(settings), stdin=stdin)
    assert declined.code == 1
    assert declined.stdout == question
    assert (
        declined.error
        == f"orderlane dlq purge: error: not purged: {settings.dead_letter_queue} keeps its 2 dead letters"
    )
    assert await queue_depth(settings.dead_letter_queue) == 2
    with terminal("y\n") as stdin:
        agreed = await orderlane("dlq", "purge", env=environment(settings), stdin=stdin)
    assert agreed.code == 0, agreed.stderr
    assert agreed.stdout == f"{question}purged 2 dead letters from {settings.dead_letter_queue}\n"
    assert await queue_depth(settings.dead_letter_queue) == 0
