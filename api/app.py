"""The application factory and the lifespan that owns the broker connection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.routing import Route

from api.errors import EXCEPTION_HANDLERS
from api.routes import Services, healthz, post_order, readyz
from broker.connection import open_broker
from broker.publisher import OrderPublisher, Publisher
from broker.settings import Settings


def create_app(settings: Settings | None = None, *, publisher: Publisher | None = None) -> Starlette:
    """Build the API. Without a `publisher`, the lifespan opens one robust connection and confirm channel and
    closes them at shutdown; with one (tests), the caller owns its connection."""
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
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers=dict(EXCEPTION_HANDLERS))
