"""`python -m api [--host H] [--port P]`: serve the API with uvicorn."""

from __future__ import annotations

import argparse
import signal
from types import FrameType

import uvicorn

from api.app import create_app
from api.connections import GuardedConfig, allow_connections
from api.metrics import ApiMetrics
from broker.cli import LoopFactory, port_number, run_main
from broker.connection import open_broker
from broker.settings import Settings

fast_event_loop: LoopFactory | None
try:
    from uvloop import new_event_loop as fast_event_loop
except ImportError:  # no uvloop for Windows: asyncio's own loop
    fast_event_loop = None


async def serve(settings: Settings, host: str, port: int) -> None:
    # Wait for the broker and check the queues before uvicorn starts, so that a start-up failure (no broker,
    # a conflicting queue) ends the process with one line rather than uvicorn's lifespan traceback. The app's
    # lifespan then opens the connection it keeps.
    async with open_broker(settings):
        pass
    allow_connections(settings.http_max_waiting_connections + settings.http_max_concurrency)
    metrics = ApiMetrics()
    config = GuardedConfig(
        create_app(settings, api_metrics=metrics),
        # uvicorn's own limit_concurrency would count waiting connections too, so a flood of half-open ones would
        # turn every real request away: requests are limited by the app (api.limits), connections by the guard.
        header_timeout=settings.http_header_timeout,
        max_waiting=settings.http_max_waiting_connections,
        max_bodies=settings.http_max_incomplete_bodies,
        closed=lambda reason: metrics.connections_closed.labels(reason=reason).inc(),
        host=host,
        port=port,
        log_config=None,
        # Off by default: /metrics counts requests by route and status, and a log line per request costs a fifth
        # of the API's throughput (docs/benchmarks.md).
        access_log=settings.access_log,
        timeout_keep_alive=settings.http_keep_alive_seconds,
        timeout_graceful_shutdown=10,
    )
    metrics.waiting_connections.set_function(lambda: len(config.waiting))
    metrics.incomplete_bodies.set_function(lambda: len(config.bodies))
    # uvicorn shuts down gracefully on SIGTERM/SIGINT (the lifespan closes the connection), then re-raises the
    # signal under the handler that was in place before it started. With these no-ops serve() returns and the
    # process exits 0, as the consumer does, instead of dying by the signal.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _already_handled_by_uvicorn)
    await uvicorn.Server(config).serve()


def _already_handled_by_uvicorn(signum: int, frame: FrameType | None) -> None:
    """Stands in for the default action uvicorn re-raises after its graceful shutdown."""


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m api", description="orderlane's HTTP API")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    parser.add_argument("--port", type=port_number, default=8000, help="port to bind (default: %(default)s)")
    args = parser.parse_args()
    # uvloop: the API's CPU per order 496 -> 403 us and 20 % more orders/s (docs/benchmarks.md). uvicorn would pick it
    # by itself, but this process makes its loop before uvicorn starts, so it is asked for here.
    return run_main("api", lambda settings: serve(settings, args.host, args.port), fast_event_loop)


if __name__ == "__main__":
    raise SystemExit(main())
