"""`python -m bench.plain_server --port P`: the API as `python -m api` served it before its connection guard (plain
uvicorn, whose limit_concurrency counts connections too, and no deadline for a request head), for the flood
scenario's side-by-side. The same app, settings and logging; only the server's HTTP protocol differs."""

from __future__ import annotations

import argparse

import uvicorn

from api.app import create_app
from broker.cli import port_number, run_main
from broker.settings import Settings


async def serve(settings: Settings, port: int) -> None:
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        http="httptools",
        log_config=None,
        access_log=settings.access_log,
        limit_concurrency=settings.http_max_concurrency,
        timeout_keep_alive=settings.http_keep_alive_seconds,
    )
    await uvicorn.Server(config).serve()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.plain_server")
    parser.add_argument("--port", type=port_number, required=True)
    port = parser.parse_args().port
    raise SystemExit(run_main("plain_server", lambda settings: serve(settings, port)))
