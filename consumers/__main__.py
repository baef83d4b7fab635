"""`python -m consumers [--handler module:callable] [--prefetch N|auto] [--concurrency N|auto] [--metrics-port P]`:
run one consumer process (`orderlane consume`).

`python -m consumers status`: the backlog (`orderlane queues`). `python -m consumers dlq list|show|replay|purge`: the
dead letters (`orderlane dlq`). The parser is built from the pieces `orderlane` uses (consumers/cli.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from consumers.cli import Run, add_consumer, add_dlq, add_queues


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consumers", description="run one orderlane consumer")
    add_consumer(parser)
    subcommands = parser.add_subparsers(title="commands", metavar="COMMAND")
    add_queues(subcommands, "status")
    add_dlq(subcommands)
    args = parser.parse_args(argv)
    run: Run = args.run
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
