"""`python -m api [--host H] [--port P] [--workers N]`: serve the API with uvicorn. `orderlane api` is the same
command: consumers/cli.py hands its arguments to `main` here."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from api.server import serve, serve_workers
from broker.cli import fast_event_loop, port_number, run_main, run_program


def worker_count(text: str) -> int:
    """An argparse type: how many API processes."""
    workers = int(text)
    if workers < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return workers


def main(argv: Sequence[str] | None = None, prog: str = "python -m api") -> int:
    """Parse `argv` (the command line's by default) as `prog` and serve; its errors are signed with `prog`
    without `python -m` (`api: error: ...`, `orderlane api: error: ...`)."""
    parser = argparse.ArgumentParser(prog=prog, description="orderlane's HTTP API")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    parser.add_argument("--port", type=port_number, default=8000, help="port to bind (default: %(default)s)")
    parser.add_argument(
        "--workers",
        type=worker_count,
        default=1,
        help="processes serving the port, each with its own broker connection (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    program = prog.removeprefix("python -m ")
    if args.workers == 1:
        # uvloop (less CPU per order: docs/benchmarks.md). uvicorn would pick it by itself, but this process makes
        # its loop before uvicorn starts, so it is asked for here.
        return run_main(program, lambda settings: serve(settings, args.host, args.port), fast_event_loop)
    return run_program(program, lambda settings: serve_workers(settings, args.host, args.port, args.workers))


if __name__ == "__main__":
    raise SystemExit(main())
