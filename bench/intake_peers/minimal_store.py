"""The minimal app (minimal.py) with orderlane's status store put in, as orderlane's intake uses it
(broker/intake.py): the order_id reserved before the publish, the answer awaited, and `accepted` sent after the
confirm without waiting. Nothing else of orderlane's: it prices the store alone, on an app that does nothing more."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.intake_peers import minimal
from bench.intake_peers.order import QUEUE
from broker.settings import Settings
from broker.status import Transition, fingerprint
from broker.status_store import StatusStore, Taken, open_status_store

TOKENS = itertools.count()


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """The store ORDERLANE_STATUS_URL names, its namespace ORDERLANE_QUEUE, as the API opens it."""
    async with minimal.lifespan(app), open_status_store(Settings(), CollectorRegistry()) as store:
        if store is None:
            raise RuntimeError("set ORDERLANE_STATUS_URL: this app is the minimal one with the status store")
        app.state.store = store
        yield


async def post_order(request: Request) -> JSONResponse:
    order = await minimal.read_order(request)
    if isinstance(order, JSONResponse):
        return order
    store: StatusStore = request.app.state.store
    token = str(next(TOKENS))
    reserved = await store.reserve(order.order_id, fingerprint(order.model_dump_json().encode()), token)
    if isinstance(reserved, Taken):
        return JSONResponse(reserved.status.model_dump(mode="json"))
    await minimal.publish(request.app.state.channel, order)
    fields: dict[str, str | int | float] = {"priority": order.priority, "queue": QUEUE}
    store.accept(Transition(order.order_id, "accepted", attempt=0, at=time.time(), fields=fields), token)
    return minimal.accepted(order)


app = Starlette(routes=[Route("/orders", post_order, methods=["POST"])], lifespan=lifespan)
