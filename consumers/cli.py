"""`orderlane`, the one command for orderlane's processes and an operator's tasks (docs/commands.md):

    orderlane api [--host H] [--port P] [--workers N]
    orderlane consume [--handler module:callable] [--prefetch N|auto] [--concurrency N|auto] [--metrics-port P]
    orderlane queues
    orderlane status ORDER_ID
    orderlane dlq list [--limit N] | show ORDER_ID | replay [--limit N | ORDER_ID ...] | purge [--yes]

`python -m consumers` (consumers/__main__.py) is built from the same parser pieces; `orderlane api` hands its
arguments to `python -m api`'s own parser (api/__main__.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeAlias

from broker.cli import fast_event_loop, port_number, run_main, run_program
from broker.settings import MAX_CONCURRENCY, MAX_PREFETCH, Concurrency, Prefetch, Settings
from consumers import commands

DEFAULT_LIMIT = 20
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What `add_subparsers()` returns (argparse names it privately)."""
Run = Callable[[argparse.Namespace], int]
"""What a command does with its parsed arguments: its exit status."""


def main(argv: Sequence[str] | None = None) -> int:
    """The `orderlane` console script."""
    if os.getcwd() not in sys.path:
        # As under `python -m` (and uvicorn for its app): a handler or an order model may be a module of the
        # current directory (--handler, ORDERLANE_HANDLER, ORDERLANE_ORDER_MODEL).
        sys.path.insert(0, os.getcwd())
    parser = argparse.ArgumentParser(prog="orderlane", description="orders over HTTP, processed by priority")
    subcommands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    # A prefix no option has: every argument, --help included, is left for the API's own parser.
    api = subcommands.add_parser("api", help="serve the HTTP API", add_help=False, prefix_chars="\0")
    api.add_argument("arguments", nargs=argparse.REMAINDER)
    runs(api, _api)
    add_consumer(subcommands.add_parser("consume", help="run one consumer process"))
    add_queues(subcommands, "queues")
    status = subcommands.add_parser("status", help="an order's status, from the status store")
    status.add_argument("order_id", metavar="ORDER_ID")
    runs(status, _status)
    add_dlq(subcommands)
    args = parser.parse_args(argv)
    run: Run = args.run
    return run(args)


def add_consumer(parser: argparse.ArgumentParser) -> None:
    """The consumer's options on `parser`, which then runs a consumer process."""
    parser.add_argument(
        "--handler",
        metavar="MODULE:CALLABLE",
        help="the handler: a coroutine function, or a plain function run in threads "
        "(default: ORDERLANE_HANDLER, else the built-in processor)",
    )
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
    runs(parser, _consume)


def add_queues(subcommands: Subcommands, name: str) -> None:
    """The backlog command, as `name` (`orderlane queues`, `python -m consumers status`)."""
    runs(subcommands.add_parser(name, help="the backlog: messages and consumers of each queue"), _queues)


def add_dlq(subcommands: Subcommands) -> None:
    """`dlq list|show|replay|purge`."""
    dlq = subcommands.add_parser("dlq", help="inspect, replay or purge the dead-letter queue")
    actions = dlq.add_subparsers(title="commands", metavar="COMMAND", required=True)
    listing = actions.add_parser("list", help="the oldest dead letters and why, left in place")
    listing.add_argument("--limit", type=positive, default=DEFAULT_LIMIT, help="at most N (default %(default)s)")
    runs(listing, _dlq_list)
    show = actions.add_parser("show", help="every dead letter of one order, in full, left in place")
    show.add_argument("order_id", metavar="ORDER_ID")
    runs(show, _dlq_show)
    replay = actions.add_parser("replay", help="send dead letters back to their lanes' work queues")
    chosen = replay.add_mutually_exclusive_group()
    chosen.add_argument("--limit", type=positive, help=f"the oldest N (default {DEFAULT_LIMIT})")
    chosen.add_argument("order_ids", nargs="*", default=[], metavar="ORDER_ID", help="exactly these orders' letters")
    runs(replay, _dlq_replay)
    purge = actions.add_parser("purge", help="drop every dead letter (their orders' statuses stay)")
    purge.add_argument("--yes", action="store_true", help="do not ask (needed without a terminal)")
    runs(purge, _dlq_purge)


def runs(parser: argparse.ArgumentParser, run: Run) -> None:
    """`parser`'s command is `run`; its errors are signed with its name (`python -m` left out: `consumers dlq
    list: error: ...`)."""
    parser.set_defaults(run=run, program=parser.prog.removeprefix("python -m "))


def operate(program: str, command: Callable[[Settings], Coroutine[Any, Any, None]]) -> int:
    """An operator command that is a coroutine: `operate_blocking`, on an event loop of its own."""
    return operate_blocking(program, lambda settings: asyncio.run(command(settings)))


def operate_blocking(program: str, command: Callable[[Settings], None]) -> int:
    """`run_program` for an operator command, whose answer is what it prints: its log (stderr) says only what
    went wrong, unless ORDERLANE_LOG_LEVEL=DEBUG asks for everything."""

    def quietly(settings: Settings) -> None:
        root = logging.getLogger()
        if root.level != logging.DEBUG:
            root.setLevel(max(root.level, logging.WARNING))
        command(settings)

    return run_program(program, quietly)


def _api(args: argparse.Namespace) -> int:
    # The composition root of `orderlane api`: the one place consumers/ imports api/, and only for this command.
    from api.__main__ import main as serve_api

    arguments: list[str] = args.arguments
    return serve_api(arguments, prog="orderlane api")


def _consume(args: argparse.Namespace) -> int:
    return run_main(
        args.program,
        lambda settings: commands.consume(
            settings,
            handler=args.handler,
            prefetch=args.prefetch,
            concurrency=args.concurrency,
            metrics_port=args.metrics_port,
        ),
        fast_event_loop,  # the consumer is the process that is busy per order: docs/benchmarks.md measures the loop
    )


def _queues(args: argparse.Namespace) -> int:
    return operate(args.program, commands.show_queues)


def _status(args: argparse.Namespace) -> int:
    return operate(args.program, lambda settings: commands.show_status(settings, args.order_id))


def _dlq_list(args: argparse.Namespace) -> int:
    return operate(args.program, lambda settings: commands.list_dead_letters(settings, args.limit))


def _dlq_show(args: argparse.Namespace) -> int:
    return operate(args.program, lambda settings: commands.show_dead_letters(settings, args.order_id))


def _dlq_replay(args: argparse.Namespace) -> int:
    limit = args.limit or DEFAULT_LIMIT
    return operate(args.program, lambda settings: commands.replay(settings, limit, args.order_ids))


def _dlq_purge(args: argparse.Namespace) -> int:
    # Blocking: the question is asked between two connections, outside any event loop (commands.purge).
    return operate_blocking(args.program, lambda settings: commands.purge(settings, yes=args.yes))


def prefetch_value(text: str) -> Prefetch:
    return "auto" if text == "auto" else positive(text)


def concurrency_value(text: str) -> Concurrency:
    return "auto" if text == "auto" else positive(text, most=MAX_CONCURRENCY)


def positive(text: str, most: int = MAX_PREFETCH) -> int:
    value = int(text)
    if not 1 <= value <= most:
        raise argparse.ArgumentTypeError(f"must be 1..{most}")
    return value
