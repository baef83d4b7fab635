"""A shop's FastAPI app that submits orders from its own endpoint with broker.AsyncOrderClient, with the guarantees of
orderlane's `POST /orders`: confirmed by the broker, published once per checkout however often it is retried.

Run it with `uvicorn examples.fastapi_client:app` beside a consumer (`python -m consumers`); it reads the same
ORDERLANE_* settings. tests/test_client_example.py runs it against the real broker.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from pydantic import BaseModel, ValidationError

from broker import AsyncOrderClient, OrderIdConflict, OrderInProgress, PublishError, Receipt, StatusUnavailable


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, AsyncOrderClient]]:
    """One client for the process: its broker connection opens at start-up and closes at shutdown."""
    async with AsyncOrderClient() as orders:
        yield {"orders": orders}


app = FastAPI(lifespan=lifespan)


def order_client(request: Request) -> AsyncOrderClient:
    orders: AsyncOrderClient = request.state.orders
    return orders


Orders = Annotated[AsyncOrderClient, Depends(order_client)]


class Checkout(BaseModel):
    """What the shop's front end posts: the cart, under an id it keeps, so a retried checkout is the same order."""

    checkout_id: str
    items: list[str]
    express: bool = False


class Placed(BaseModel):
    order_id: str
    state: str


@app.post("/checkout", status_code=202)
async def checkout(cart: Checkout, orders: Orders, response: Response) -> Placed:
    order = {"order_id": cart.checkout_id, "items": cart.items, "priority": 1 if cart.express else 5}
    try:
        taken = await orders.submit(order)
    except ValidationError as exc:  # not a valid order (the order model's rules)
        raise HTTPException(422, exc.errors(include_url=False, include_context=False)) from exc
    except OrderIdConflict as exc:  # this checkout_id was submitted with another cart
        raise HTTPException(409, str(exc)) from exc
    except (PublishError, OrderInProgress, StatusUnavailable) as exc:  # not taken now: the front end retries
        raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from exc
    if isinstance(taken, Receipt):
        return Placed(order_id=taken.order_id, state="accepted")
    response.status_code = 200  # submitted before: nothing was published again
    return Placed(order_id=taken.order_id, state=taken.state)
