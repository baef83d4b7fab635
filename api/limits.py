"""The bound on requests in flight: beyond it a request gets 503 at once rather than a place in a queue without end."""

from __future__ import annotations

from prometheus_client import Counter
from starlette.types import ASGIApp, Receive, Scope, Send

from api.responses import error_response, problem

UNLIMITED_PATHS = frozenset({"/healthz"})
"""A liveness probe must not fail because the API is busy: a restart would make it busier."""


class InFlightLimit:
    """Pure ASGI middleware counting the requests between their head and their response. A request still sending
    its body counts: `api.connections` bounds how many of those there can be, below this limit."""

    def __init__(self, app: ASGIApp, limit: int, refused: Counter) -> None:
        self.app = app
        self.limit = limit
        self.refused = refused
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            self.refused.inc()
            message = f"{self.limit} requests are in flight (ORDERLANE_HTTP_MAX_CONCURRENCY); retry shortly"
            busy = error_response(503, [problem("overloaded", message)], {"Retry-After": "1"})
            await busy(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
