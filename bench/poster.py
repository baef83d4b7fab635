"""`python -m bench.poster PORT`: the priority benchmark's HTTP client, a process of its own, as a user's client is.

It reads one order (its JSON body) per line on stdin, POSTs it to the API on PORT over one kept-alive httpx
connection, and answers each on stdout with `order_id wall perf`: time.time() and time.perf_counter() taken just
before the POST (perf_counter is the machine's monotonic clock, the same in every process). A POST not answered
202 ends it with the answer on stderr. It prints `ready` once the connection is open.

In the benchmark's own process the client would share the event loop with the consumer under test: each POST
would wait for the consumer's turn of the loop, and the consumer for httpx's (about 1 ms of CPU a request here).
"""

from __future__ import annotations

import asyncio
import sys
import time

import httpx

from broker.messages import Order


async def post_lines(port: int) -> None:
    loop = asyncio.get_running_loop()
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        await client.get("/readyz")  # opens the connection the POSTs keep using
        print("ready", flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.buffer.readline):
            body = line.rstrip(b"\n")
            order_id = Order.model_validate_json(body).order_id
            wall, perf = time.time(), time.perf_counter()
            response = await client.post("/orders", content=body, headers=headers)
            if response.status_code != 202:
                raise SystemExit(f"{order_id} not accepted: {response.status_code} {response.text}")
            print(order_id, repr(wall), repr(perf), flush=True)


if __name__ == "__main__":
    asyncio.run(post_lines(int(sys.argv[1])))
