"""Serving the API with uvicorn: in this process, or in `workers` processes that share one listening socket under
uvicorn's own supervisor (`uvicorn.supervisors.Multiprocess`: it restarts a worker that dies, and stops them all
gracefully on SIGTERM or SIGINT). Each worker has its own broker connection, status store client and limits."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
from types import FrameType
from typing import Any, Final

import uvicorn
from starlette.applications import Starlette
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from api.app import create_app
from api.connections import CloseReason, GuardedConfig, allow_connections
from api.metrics import ApiMetrics
from api.multiprocess import metrics_directory
from broker.cli import tracing_for
from broker.connection import open_broker
from broker.errors import OrderlaneError
from broker.logs import configure_logging
from broker.settings import Settings

logger = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_SECONDS: Final = 10
"""After SIGTERM, how long requests in flight may take before they are cancelled."""
API_SERVICE: Final = "orderlane-api"
"""Its traces' service name, unless OTEL_SERVICE_NAME says otherwise."""
PR_SET_PDEATHSIG: Final = 1
"""Linux's prctl(2) option: the signal a process gets when its parent dies."""


class ApiServerConfig(GuardedConfig):
    """uvicorn's configuration of one API process, made from the settings alone: uvicorn's supervisor pickles it
    into each worker it spawns, and `load_app` builds the app and its metrics in the process that serves them."""

    def __init__(self, settings: Settings, **options: Any) -> None:
        self.settings = settings  # first: uvicorn's __init__ calls configure_logging
        super().__init__(
            "api.app:create_app",  # what uvicorn would import; load_app builds it from the settings instead
            header_timeout=settings.http_header_timeout,
            max_waiting=settings.http_max_waiting_connections,
            max_bodies=settings.http_max_incomplete_bodies,
            log_config=None,
            # Off by default: /metrics counts requests by route and status, and a log line per request costs a
            # fifth of the API's throughput (docs/benchmarks.md).
            access_log=settings.access_log,
            timeout_keep_alive=settings.http_keep_alive_seconds,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
            **options,
        )
        self.metrics: ApiMetrics | None = None
        self.supervisor = os.getpid()
        """With workers, the process that starts them: this one."""

    def configure_logging(self) -> None:
        """Called by uvicorn here and in each worker it spawns: orderlane's log format everywhere."""
        super().configure_logging()
        configure_logging(self.settings)

    def load_app(self) -> Starlette:
        """The app, built in the process that serves it. A failure exits as uvicorn's own `load_app` does, with
        its start-up failure status: the supervisor then stops every worker instead of starting this one again."""
        try:
            if self.workers > 1:
                stop_with_the_supervisor(self.supervisor)
            self.metrics = ApiMetrics()
            self.metrics.waiting_connections.read_from(lambda: len(self.waiting))
            self.metrics.incomplete_bodies.read_from(lambda: len(self.bodies))
            tracing = tracing_for(self.settings, service=API_SERVICE)
            return create_app(self.settings, api_metrics=self.metrics, tracing=tracing)
        except OrderlaneError as exc:  # a setting that cannot work (tracing without its extra): one line
            logger.error("could not build the API: %s", exc)
            sys.exit(STARTUP_FAILURE)
        except Exception:
            logger.exception("could not build the API")
            sys.exit(STARTUP_FAILURE)

    def closed(self, reason: CloseReason) -> None:
        assert self.metrics is not None, "connections are served only after load_app"
        self.metrics.connections_closed.labels(reason=reason).inc()


async def check_broker(settings: Settings) -> None:
    """Wait for the broker and check the queues before uvicorn starts, so that a start-up failure (no broker, a
    conflicting queue) ends the process with one line rather than uvicorn's lifespan traceback. The app's lifespan
    then opens the connection it keeps."""
    async with open_broker(settings):
        pass


async def serve(settings: Settings, host: str, port: int) -> None:
    """Serve in this process until SIGTERM or SIGINT."""
    with metrics_directory(workers=1):
        await check_broker(settings)
        allow_connections(settings.http_max_waiting_connections + settings.http_max_concurrency)
        config = ApiServerConfig(settings, host=host, port=port)
        # uvicorn shuts down gracefully on SIGTERM/SIGINT (the lifespan closes the connection), then re-raises the
        # signal under the handler that was in place before it started. With these no-ops serve() returns and the
        # process exits 0, as the consumer does, instead of dying by the signal.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _already_handled_by_uvicorn)
        await uvicorn.Server(config).serve()


def _already_handled_by_uvicorn(signum: int, frame: FrameType | None) -> None:
    """Stands in for the default action uvicorn re-raises after its graceful shutdown."""


def serve_workers(settings: Settings, host: str, port: int, workers: int) -> None:
    """Serve from `workers` processes until SIGTERM or SIGINT, which the supervisor passes on to each worker, which
    stops as `serve` does. A worker that dies is replaced; one that cannot start stops them all. Each worker runs on
    uvloop where it is installed (uvicorn's `loop="auto"`), as `python -m api` does."""
    with metrics_directory(workers):
        asyncio.run(check_broker(settings))
        allow_connections(settings.http_max_waiting_connections + settings.http_max_concurrency)
        config = ApiServerConfig(settings, host=host, port=port, workers=workers)
        with config.bind_socket() as listening:
            supervisor = Multiprocess(config, sockets=[listening])
            supervisor.run()
    if any(worker.exitcode == STARTUP_FAILURE for worker in supervisor.processes):
        raise OrderlaneError("an API worker failed to start (its log above says why), so all were stopped")


def stop_with_the_supervisor(supervisor: int) -> None:
    """Linux: have the kernel send this worker SIGTERM, which it obeys gracefully, if the supervisor dies without
    stopping it (SIGKILL, the OOM killer), so that no orphan goes on serving the port. Elsewhere, nothing."""
    if sys.platform != "linux":
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
