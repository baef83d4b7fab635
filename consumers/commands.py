"""What the consumer's commands do and print (`orderlane consume|queues|status|dlq`, `python -m consumers`): run the
process, show the backlog, an order's status, the dead letters; send dead letters back or drop them.

Each operator command connects, answers on stdout and exits. When it cannot do what it was asked (an unknown order,
ids not among the dead letters, a purge nobody confirmed) it raises CommandFailed: one line on stderr and exit 1
(broker.cli.run_program).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Collection

import orjson
from prometheus_client import CollectorRegistry

from broker.cli import tracing_for
from broker.connection import open_broker
from broker.errors import ConfigurationError, OrderlaneError
from broker.queues import queue_stats
from broker.settings import Concurrency, Prefetch, Settings
from broker.status import OrderStatus
from broker.status_store import open_status_store
from consumers.dlq import (
    DeadLetter,
    find_dead_letters,
    peek_dead_letters,
    purge_dead_letters,
    replay_dead_letters,
    replay_orders,
)
from consumers.handlers import OrderProcessor, load_handler
from consumers.runner import consume_until_stopped
from consumers.tables import format_dead_letters, format_queue_stats, format_table
from consumers.threads import InThreads, as_handler

CONSUMER_SERVICE = "orderlane-consumer"
"""Its traces' service name, unless OTEL_SERVICE_NAME says otherwise."""


class CommandFailed(OrderlaneError):
    """An operator command could not do what it was asked; the message says what, in one line."""


async def consume(
    settings: Settings,
    *,
    handler: str | None,
    prefetch: Prefetch | None,
    concurrency: Concurrency | None,
    metrics_port: int | None,
) -> None:
    """One consumer process until SIGTERM. Each option left out (None) comes from the settings; with no handler
    there either (ORDERLANE_HANDLER), the built-in order processor."""
    reference = handler or settings.handler
    loaded = load_handler(reference) if reference else OrderProcessor(settings.simulated_work_ms / 1000)
    run, threads = as_handler(loaded, concurrency or settings.concurrency, settings.vip_slots)
    tracing = tracing_for(settings, service=CONSUMER_SERVICE)
    try:
        await consume_until_stopped(
            settings,
            run,
            prefetch=prefetch or settings.prefetch,
            concurrency=threads,
            metrics_port=metrics_port or settings.metrics_port,
            tracing=tracing,
        )
    finally:
        if isinstance(run, InThreads):
            run.close()
        if tracing is not None:
            tracing.flush()


async def show_queues(settings: Settings) -> None:
    async with open_broker(settings) as broker:
        stats = await queue_stats(broker.connection, broker.topology)
    print(format_queue_stats(stats))


async def show_status(settings: Settings, order_id: str) -> None:
    """The order's record in the status store; CommandFailed if it has none, StatusUnavailable if the store is away."""
    # The store being away is this command's error line; its own warning would say the same twice.
    logging.getLogger("broker.status_store").setLevel(logging.ERROR)
    async with open_status_store(settings, CollectorRegistry()) as store:
        if store is None:
            raise ConfigurationError("ORDERLANE_STATUS_URL is empty: there is no status store to ask")
        status = await store.get(order_id)
    if status is None:
        raise CommandFailed(f"no status for order {order_id!r}: never seen, or kept no longer (ORDERLANE_STATUS_TTL)")
    print(format_status(status))


async def list_dead_letters(settings: Settings, limit: int) -> None:
    async with open_broker(settings) as broker:
        letters, total = await peek_dead_letters(broker, settings, limit)
    print(format_dead_letters(letters, total, settings.dead_letter_queue))


async def show_dead_letters(settings: Settings, order_id: str) -> None:
    """Every dead letter of one order, in full; CommandFailed if it has none."""
    async with open_broker(settings) as broker:
        letters = await find_dead_letters(broker, settings, {order_id})
    if not letters:
        raise CommandFailed(f"no dead letter of order {order_id!r} in {settings.dead_letter_queue}")
    print("\n\n".join(format_dead_letter(letter) for letter in letters))
    print(f"\n{_dead_letters(len(letters))} of {order_id} in {settings.dead_letter_queue}")


async def replay(settings: Settings, limit: int, order_ids: Collection[str] = ()) -> None:
    """The oldest `limit` dead letters back to their lanes' work queues; with `order_ids`, exactly theirs (and
    CommandFailed naming the ids that had none, after the others went back)."""
    async with open_status_store(settings, CollectorRegistry()) as store, open_broker(settings) as broker:
        if order_ids:
            replayed = await replay_orders(broker, settings, set(order_ids), store)
        else:
            replayed = await replay_dead_letters(broker, settings, limit, store)
    print(f"replayed {_dead_letters(len(replayed))} from {settings.dead_letter_queue} to their lanes' work queues")
    missing = [order_id for order_id in dict.fromkeys(order_ids) if order_id not in replayed]
    if missing:
        raise CommandFailed(f"not in {settings.dead_letter_queue}: {', '.join(missing)}")


def purge(settings: Settings, *, yes: bool) -> None:
    """Drop every dead letter, once the operator said yes (`--yes`, or asked on the terminal). The question waits
    with no connection open, and outside the event loop, so that Ctrl-C at it simply ends the command."""
    queue = settings.dead_letter_queue
    if not yes:
        if not sys.stdin.isatty():
            raise CommandFailed(f"not purging {queue}: no terminal to ask on (--yes purges without asking)")
        count = asyncio.run(_dead_letter_count(settings))
        if count == 0:
            print(f"no dead letters in {queue}")
            return
        if not _confirmed(f"purge {_dead_letters(count)} from {queue}? [y/N] "):
            raise CommandFailed(f"not purged: {queue} keeps its {_dead_letters(count)}")
    purged = asyncio.run(_purge(settings))
    print(f"purged {_dead_letters(purged)} from {queue}")


async def _dead_letter_count(settings: Settings) -> int:
    async with open_broker(settings) as broker:
        _, count = await peek_dead_letters(broker, settings, 0)
    return count


async def _purge(settings: Settings) -> int:
    async with open_broker(settings) as broker:
        return await purge_dead_letters(broker, settings)


def _confirmed(question: str) -> bool:
    """Yes only if the operator typed y or yes; Ctrl-C or Ctrl-D at the question is a no."""
    try:
        answer = input(question)
    except (EOFError, KeyboardInterrupt):
        print()
        return False
    return answer.strip().lower() in ("y", "yes")


def format_status(status: OrderStatus) -> str:
    """One field a line, then when it entered each state it went through, oldest first."""
    rows = [
        ("order_id", status.order_id),
        ("state", status.state),
        ("priority", _text(status.priority)),
        ("queue", _text(status.queue)),
        ("attempt", _text(status.attempt)),
    ]
    if status.next_try_at is not None:
        rows.append(("next_try_at", status.next_try_at.isoformat(timespec="milliseconds")))
    rows.append(("last_error", _text(status.last_error)))
    rows += [(f"at {state}", at.isoformat(timespec="milliseconds")) for state, at in status.at.items()]
    return format_table(rows)


def format_dead_letter(letter: DeadLetter) -> str:
    """Why it was given up, then its body: JSON indented, anything else as text."""
    rows = [
        ("message_id", letter.message_id),
        ("priority", _text(letter.priority)),
        ("reason", letter.error_type),
        ("error", letter.error),
        ("attempts", _text(letter.attempts)),
        ("dead_lettered_at", letter.dead_lettered_at),
    ]
    try:
        body = orjson.dumps(orjson.loads(letter.body), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        body = letter.body.decode(errors="replace")
    return f"{format_table(rows)}\nbody:\n{body}"


def _dead_letters(count: int) -> str:
    return f"{count} dead letter{'' if count == 1 else 's'}"


def _text(value: object) -> str:
    return "-" if value is None else str(value)
