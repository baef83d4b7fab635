"""`python -m consumers [--handler module:callable] [--prefetch N]`: run one consumer process.

`python -m consumers dlq list [--limit N]` and `python -m consumers dlq replay [--limit N]`: the dead letters.
"""

from __future__ import annotations

import argparse

from broker.cli import run_main
from broker.connection import open_broker
from broker.settings import Settings
from consumers.delivery import Handler
from consumers.dlq import format_dead_letters, peek_dead_letters, replay_dead_letters
from consumers.handlers import OrderProcessor, load_handler
from consumers.runner import consume_until_stopped

DEFAULT_LIMIT = 20


async def consume(settings: Settings, handler_reference: str | None, prefetch: int | None) -> None:
    handler: Handler = (
        load_handler(handler_reference)
        if handler_reference
        else OrderProcessor(work_seconds=settings.simulated_work_ms / 1000)
    )
    await consume_until_stopped(settings, handler, prefetch=prefetch or settings.prefetch)


async def list_dead_letters(settings: Settings, limit: int) -> None:
    async with open_broker(settings) as broker:
        letters, total = await peek_dead_letters(broker, settings, limit)
    print(format_dead_letters(letters, total, settings.dead_letter_queue))


async def replay(settings: Settings, limit: int) -> None:
    async with open_broker(settings) as broker:
        replayed = await replay_dead_letters(broker, settings, limit)
    print(f"replayed {len(replayed)} dead letters from {settings.dead_letter_queue} to {settings.queue}")


MAX_PREFETCH = 65535  # basic.qos carries prefetch_count in 16 bits


def positive(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_PREFETCH:
        raise argparse.ArgumentTypeError(f"must be 1..{MAX_PREFETCH}")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m consumers", description="run one orderlane consumer")
    parser.add_argument("--handler", help="async handler as module:callable (default: the built-in order processor)")
    parser.add_argument("--prefetch", type=positive, help="unacked messages in flight (default: ORDERLANE_PREFETCH)")
    commands = parser.add_subparsers(dest="command", title="commands")
    dlq = commands.add_parser("dlq", help="inspect or replay the dead-letter queue")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    for name, help_text in (("list", "show dead letters, leaving them in place"), ("replay", "send them back")):
        command = dlq_commands.add_parser(name, help=help_text)
        command.add_argument("--limit", type=positive, default=DEFAULT_LIMIT, help="at most N (default %(default)s)")
    args = parser.parse_args()
    if args.command is None:
        return run_main("consumers", lambda settings: consume(settings, args.handler, args.prefetch))
    if args.dlq_command == "list":
        return run_main("consumers dlq", lambda settings: list_dead_letters(settings, args.limit))
    return run_main("consumers dlq", lambda settings: replay(settings, args.limit))


if __name__ == "__main__":
    raise SystemExit(main())
