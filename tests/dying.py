"""A handler for consumer processes started by tests: `--handler tests.dying:record_then_die`.

It records the order as tests.recording does; for the order named by ORDERLANE_TEST_DIE_AFTER it then kills its
own process with SIGKILL at the first turn of the event loop in which the order's status reads `processed`. The
consumer writes `processed` before it acks, and its ack leaves at least one turn after the store's answer, so the
process dies with the handler done, the status written and the message unacked: the window a crash can hit.
"""

from __future__ import annotations

import asyncio
import os
import signal

from redis import Redis

from broker.messages import Order
from tests.recording import record

DIE_AFTER = "ORDERLANE_TEST_DIE_AFTER"


async def record_then_die(order: Order) -> None:
    await record(order)
    if order.order_id != os.environ[DIE_AFTER]:
        return
    loop = asyncio.get_running_loop()
    client = Redis.from_url(os.environ["ORDERLANE_STATUS_URL"])
    key = f"orderlane:{os.environ['ORDERLANE_QUEUE']}:order:{order.order_id}"

    def die_once_processed() -> None:
        if client.hget(key, "state") == b"processed":
            os.kill(os.getpid(), signal.SIGKILL)
        loop.call_soon(die_once_processed)

    loop.call_soon(die_once_processed)
