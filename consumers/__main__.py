"""`python -m consumers [--handler module:callable] [--prefetch N|auto] [--concurrency N|auto] [--metrics-port P]`:
run one consumer process.

`python -m consumers status`: the backlog. `python -m consumers dlq list|replay [--limit N]`: the dead letters.
"""

from __future__ import annotations

import argparse

from prometheus_client import CollectorRegistry

from broker.cli import port_number, run_main, tracing_for
from broker.connection import open_broker
from broker.queues import queue_stats
from broker.settings import MAX_CONCURRENCY, MAX_PREFETCH, Concurrency, Prefetch, Settings
from broker.status_store import open_status_store
from consumers.dlq import peek_dead_letters, replay_dead_letters
from consumers.handlers import OrderProcessor, load_handler
from consumers.runner import consume_until_stopped
from consumers.tables import format_dead_letters, format_queue_stats
from consumers.threads import InThreads, as_handler

DEFAULT_LIMIT = 20
CONSUMER_SERVICE = "orderlane-consumer"
"""Its traces' service name, unless OTEL_SERVICE_NAME says otherwise."""


async def consume(settings: Settings, args: argparse.Namespace) -> None:
    loaded = load_handler(args.handler) if args.handler else OrderProcessor(settings.simulated_work_ms / 1000)
    handler, concurrency = as_handler(loaded, args.concurrency or settings.concurrency)
    tracing = tracing_for(settings, service=CONSUMER_SERVICE)
    try:
        await consume_until_stopped(
            settings,
            handler,
            prefetch=args.prefetch or settings.prefetch,
            concurrency=concurrency,
            metrics_port=args.metrics_port or settings.metrics_port,
            tracing=tracing,
        )
    finally:
        if isinstance(handler, InThreads):
            handler.close()
        if tracing is not None:
            tracing.flush()


async def status(settings: Settings) -> None:
    async with open_broker(settings) as broker:
        stats = await queue_stats(broker.connection, broker.topology)
    print(format_queue_stats(stats))


async def list_dead_letters(settings: Settings, limit: int) -> None:
    async with open_broker(settings) as broker:
        letters, total = await peek_dead_letters(broker, settings, limit)
    print(format_dead_letters(letters, total, settings.dead_letter_queue))


async def replay(settings: Settings, limit: int) -> None:
    async with open_status_store(settings, CollectorRegistry()) as store, open_broker(settings) as broker:
        replayed = await replay_dead_letters(broker, settings, limit, store)
    print(f"replayed {len(replayed)} dead letters from {settings.dead_letter_queue} to their lanes' work queues")


def prefetch_value(text: str) -> Prefetch:
    return "auto" if text == "auto" else positive(text)


def concurrency_value(text: str) -> Concurrency:
    return "auto" if text == "auto" else positive(text, most=MAX_CONCURRENCY)


def positive(text: str, most: int = MAX_PREFETCH) -> int:
    value = int(text)
    if not 1 <= value <= most:
        raise argparse.ArgumentTypeError(f"must be 1..{most}")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m consumers", description="run one orderlane consumer")
    parser.add_argument("--handler", help="async handler as module:callable (default: the built-in order processor)")
    parser.add_argument(
        "--prefetch",
        type=prefetch_value,
        help="deliveries held per queue (unacked), or auto (default: ORDERLANE_PREFETCH)",
    )
    parser.add_argument(
        "--concurrency",
        type=concurrency_value,
        help="handlers run at once, or auto (default: ORDERLANE_CONCURRENCY)",
    )
    parser.add_argument(
        "--metrics-port", type=port_number, help="serve Prometheus metrics here (default: ORDERLANE_METRICS_PORT)"
    )
    commands = parser.add_subparsers(dest="command", title="commands")
    commands.add_parser("status", help="the backlog: messages and consumers of each queue")
    dlq = commands.add_parser("dlq", help="inspect or replay the dead-letter queue")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    for name, help_text in (("list", "show dead letters, leaving them in place"), ("replay", "send them back")):
        command = dlq_commands.add_parser(name, help=help_text)
        command.add_argument("--limit", type=positive, default=DEFAULT_LIMIT, help="at most N (default %(default)s)")
    args = parser.parse_args()
    if args.command is None:
        return run_main("consumers", lambda settings: consume(settings, args))
    if args.command == "status":
        return run_main("consumers status", status)
    if args.dlq_command == "list":
        return run_main("consumers dlq", lambda settings: list_dead_letters(settings, args.limit))
    return run_main("consumers dlq", lambda settings: replay(settings, args.limit))


if __name__ == "__main__":
    raise SystemExit(main())
