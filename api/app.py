"""The application factory and the lifespan that owns the broker connection."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from functools import partial
from importlib.metadata import version
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from api.auth import ApiKeys
from api.errors import exception_handlers
from api.limits import InFlightLimit, TokenBuckets
from api.metrics import ApiMetrics, RequestMetrics
from api.openapi import openapi_document
from api.routes import get_order, healthz, metrics, openapi, post_order, queues, readyz
from api.state import BacklogSource, Services
from broker.connection import open_broker
from broker.estimates import WaitEstimates, estimating
from broker.intake import Intake
from broker.publisher import OrderPublisher, Publisher
from broker.queues import queue_stats
from broker.settings import Settings
from broker.status_store import StatusStore, open_status_store

if TYPE_CHECKING:
    from broker.tracing import Tracing

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    publisher: Publisher | None = None,
    backlog: BacklogSource | None = None,
    api_metrics: ApiMetrics | None = None,
    tracing: Tracing | None = None,
    status: StatusStore | None = None,
) -> Starlette:
    """Build the API. Without a `publisher`, the lifespan opens one robust connection and confirm channel and
    closes them at shutdown; with one (tests), the caller owns its connection, and `/queues` answers only if
    a `backlog` is given too. `api_metrics` are given by a server that counts into them too. With `tracing`,
    requests and publishes make spans. With `status` (the test harness, consumers/testing.py), that status store is
    used rather than the one ORDERLANE_STATUS_URL names, and its caller owns it."""
    settings = settings or Settings()
    api_metrics = api_metrics or ApiMetrics()
    order_model = settings.order_type
    document = openapi_document(version("orderlane"), order_model)

    def services(
        publisher: Publisher,
        backlog: BacklogSource | None,
        status: StatusStore | None,
        estimates: WaitEstimates | None = None,
    ) -> dict[str, Services]:
        intake = Intake(publisher, status, api_metrics.intake, settings, estimates)
        api_metrics.broker_blocked.read_from(lambda: publisher.is_blocked)
        if estimates is not None:
            api_metrics.watch(estimates)
        found = Services(settings, order_model, publisher, intake, status, api_metrics, backlog, document, estimates)
        return {"services": found}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Services]]:
        store: AbstractAsyncContextManager[StatusStore | None] = (
            nullcontext(status) if status is not None else open_status_store(settings, api_metrics.registry)
        )
        async with api_metrics.sampling(), store as opened:
            try:
                if publisher is not None:
                    yield services(publisher, backlog, opened)
                    return
                async with open_broker(settings) as broker, estimating(broker, opened) as estimates:
                    stats = partial(queue_stats, broker.connection, broker.topology)
                    started = services(OrderPublisher(broker, settings, tracing), stats, opened, estimates)
                    gc.freeze()  # what start-up made lives as long as the app: no full collection walks it again
                    yield started
            finally:
                if tracing is not None:
                    tracing.flush()

    routes = [
        Route("/orders", post_order, methods=["POST"]),
        Route("/orders/{order_id}", get_order, methods=["GET"]),
        Route("/queues", queues, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    middleware = [
        Middleware(RequestMetrics, metrics=api_metrics),
        Middleware(
            InFlightLimit,
            limit=settings.http_max_concurrency,
            refused=api_metrics.overloaded,
            in_flight=api_metrics.requests_in_flight,
        ),
    ]
    if tracing is not None:
        from api.tracing import request_spans  # OpenTelemetry's (the `otel` extra): only when tracing is on

        middleware.insert(0, request_spans(tracing))
    if settings.api_keys:
        keys = tuple(key.get_secret_value().encode() for key in settings.api_keys)
        rates = None
        if settings.rate_limit_per_key is not None:
            rates = TokenBuckets(settings.rate_limit_per_key, settings.rate_limit_burst)
            logger.info("each API key may send %g requests/s", settings.rate_limit_per_key)
        middleware.append(
            Middleware(
                ApiKeys,
                keys=keys,
                open_paths=settings.open_paths,
                rates=rates,
                rate_limited=api_metrics.rate_limited,
            )
        )
        logger.info("API keys required (%d keys), except on %s", len(keys), ", ".join(settings.open_paths))
    else:
        logger.info("no API keys configured: POST /orders is open to anyone who can reach it")
    return Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers=exception_handlers(settings.retry_after_seconds),
    )
