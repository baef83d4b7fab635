"""What both entry points do around their main coroutine: one line on a known failure, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from broker.errors import ConfigurationError, OrderlaneError
from broker.logs import configure_logging
from broker.settings import Settings, check_variables

if TYPE_CHECKING:
    from broker.tracing import Tracing

EXIT_FAILURE = 1
OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
"""OpenTelemetry's standard variables for where traces go: either one set turns tracing on."""

logger = logging.getLogger(__name__)


LoopFactory = Callable[[], asyncio.AbstractEventLoop]

fast_event_loop: LoopFactory | None
"""uvloop's loop, for the API and the consumers: less CPU per order (docs/benchmarks.md); None where uvloop is not
installed (Windows), and asyncio's own loop is used."""
try:
    from uvloop import new_event_loop as fast_event_loop
except ImportError:
    fast_event_loop = None


def run_main(
    program: str, main: Callable[[Settings], Coroutine[Any, Any, None]], loop_factory: LoopFactory | None = None
) -> int:
    """`run_program` for a coroutine: `main` runs on a loop from `loop_factory`, else asyncio's own."""

    def run_on_a_loop(settings: Settings) -> None:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(main(settings))

    return run_program(program, run_on_a_loop)


def configuration_problems(error: ValidationError) -> str:
    """One clause per variable: `ORDERLANE_PREFETCH: Input should be greater than or equal to 1 or Input should be
    'auto'`, not one per member of a union setting; a rule across settings as its own message."""
    by_variable: dict[str, list[str]] = {}
    for problem in error.errors():
        variable = f"ORDERLANE_{str(problem['loc'][0]).upper()}: " if problem["loc"] else ""
        by_variable.setdefault(variable, []).append(problem["msg"])
    return "; ".join(variable + " or ".join(messages) for variable, messages in by_variable.items())


def run_program(program: str, main: Callable[[Settings], None]) -> int:
    """Load the settings, set up logging and run `main`; a bad or misspelt setting or a known failure is one line on
    stderr."""
    try:
        check_variables(os.environ)
        settings = Settings()
    except ValidationError as exc:
        print(f"{program}: error: invalid configuration: {configuration_problems(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    except ConfigurationError as exc:
        print(f"{program}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    configure_logging(settings)
    # Until the process installs its own graceful handlers (once it is connected), SIGTERM stops it as Ctrl-C
    # does: the start-up retries are cancelled and it exits without a traceback.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        main(settings)
    except OrderlaneError as exc:
        print(f"{program}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{program}: stopped before it was ready", file=sys.stderr)
    return 0


def tracing_for(settings: Settings, service: str) -> Tracing | None:
    """The process's tracing, as service `service`: if ORDERLANE_TRACING asks for it, or an OTLP endpoint is set
    in OpenTelemetry's standard variables. Asked for without the `otel` extra, an error; implied by an endpoint set
    for every process on the host (an operator's doing), a warning, and no tracing."""
    implied = any(os.environ.get(variable) for variable in OTLP_ENDPOINT_VARIABLES)
    if not settings.tracing and not implied:
        return None
    try:  # the `otel` extra is optional: imported only when tracing is on
        from broker.tracing import otlp_tracing
    except ImportError as exc:
        if settings.tracing:
            raise ConfigurationError(
                f"ORDERLANE_TRACING is on, but OpenTelemetry is not installed ({exc}): pip install 'orderlane[otel]'"
            ) from exc
        logger.warning("an OTLP endpoint is set, but OpenTelemetry is not installed: no traces (orderlane[otel])")
        return None
    return otlp_tracing(service)


def port_number(text: str) -> int:
    """An argparse type: a TCP port."""
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("must be 0..65535")
    return port
