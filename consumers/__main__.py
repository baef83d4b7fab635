"""`python -m consumers [--handler module:callable] [--prefetch N]`: run one consumer process."""

from __future__ import annotations

import argparse

from broker.cli import run_main
from broker.settings import Settings
from consumers.delivery import Handler
from consumers.handlers import OrderProcessor, load_handler
from consumers.runner import consume_until_stopped


async def consume(settings: Settings, handler_reference: str | None, prefetch: int | None) -> None:
    handler: Handler = (
        load_handler(handler_reference)
        if handler_reference
        else OrderProcessor(work_seconds=settings.simulated_work_ms / 1000)
    )
    await consume_until_stopped(settings, handler, prefetch=prefetch or settings.prefetch)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m consumers", description="run one orderlane consumer")
    parser.add_argument("--handler", help="async handler as module:callable (default: the built-in order processor)")
    parser.add_argument("--prefetch", type=int, help="unacked messages in flight (default: ORDERLANE_PREFETCH)")
    args = parser.parse_args()
    if args.prefetch is not None and args.prefetch < 1:
        parser.error("--prefetch must be at least 1")
    return run_main("consumers", lambda settings: consume(settings, args.handler, args.prefetch))


if __name__ == "__main__":
    raise SystemExit(main())
