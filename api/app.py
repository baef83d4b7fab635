"""The application factory and the lifespan that owns the broker connection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.responses import error_response, problem
from api.routes import Services, healthz, post_order, readyz
from broker.connection import open_broker
from broker.publisher import OrderPublisher, Publisher
from broker.settings import Settings


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, [problem("http_error", exc.detail)], exc.headers)


def create_app(settings: Settings | None = None, *, publisher: Publisher | None = None) -> Starlette:
    """Build the API. Without a `publisher`, the lifespan connects to the broker and closes it at shutdown;
    with one, the caller owns its connection (as `python -m api` and the tests do)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Services]]:
        if publisher is not None:
            yield {"services": Services(settings=settings, publisher=publisher)}
            return
        async with open_broker(settings) as broker:
            yield {"services": Services(settings=settings, publisher=OrderPublisher(broker, settings))}

    routes = [
        Route("/orders", post_order, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
