"""`python -m bench.poster PORT`: the priority benchmark's HTTP client, a process of its own, as a user's client is.

It reads one order (its JSON body) per line on stdin, POSTs it to the API on PORT over one kept-alive connection,
and answers each on stdout with `order_id wall perf`: time.time() and time.perf_counter() taken just before the
request is written (perf_counter is the machine's monotonic clock, the same in every process). A POST not answered
202 ends it with the answer on stderr. It prints `ready` once the connection is open.

The request is HTTP/1.1 written by hand, as wrk writes it for the intake benchmark: what is timed is the API's
and the broker's share of the wait, not the client library's. httpx, say, spends most of a millisecond of CPU
building each request before a byte is written, which on two busy cores stretches further, and would be counted
as the VIP's wait. In the benchmark's own process the client would share the event loop with the consumer under
test, hence a process of its own.
"""

from __future__ import annotations

import asyncio
import sys
import time

from broker.messages import Order

REQUEST = b"POST /orders HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The status line and the body of one response (the API always sends a Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.split(b"\r\n")
    length = 0
    for line in header_lines:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status_line, await reader.readexactly(length)


async def post_lines(port: int) -> None:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /readyz HTTP/1.1\r\nHost: bench\r\n\r\n")
    await read_response(reader)
    print("ready", flush=True)
    try:
        while line := await loop.run_in_executor(None, sys.stdin.buffer.readline):
            body = line.rstrip(b"\n")
            order_id = Order.model_validate_json(body).order_id
            request = REQUEST % len(body) + body
            wall, perf = time.time(), time.perf_counter()
            writer.write(request)
            status_line, answer = await read_response(reader)
            if status_line.split(b" ", 2)[1] != b"202":
                raise SystemExit(f"{order_id} not accepted: {status_line.decode()} {answer.decode()}")
            print(order_id, repr(wall), repr(perf), flush=True)
    finally:
        writer.close()


if __name__ == "__main__":
    asyncio.run(post_lines(int(sys.argv[1])))
