"""`python -m bench SCENARIO`: run a benchmark, print its table, write its JSON to bench/results/."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.drain import measure_drain
from bench.intake import measure_intake
from bench.priority import measure_priority

RESULTS = Path(__file__).with_name("results")


def save(scenario: str, rows: list[Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{scenario}.json"
    document = {
        "scenario": scenario,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "rows": [asdict(row) | ({"ratio": row.ratio} if hasattr(row, "ratio") else {}) for row in rows],
    }
    path.write_text(json.dumps(document, indent=2))
    return path


async def drain(args: argparse.Namespace) -> None:
    rows = []
    print(f"{'prefetch':>8} {'orderlane/s':>12} {'raw/s':>10} {'ratio':>6}")
    for prefetch in args.prefetch:
        row = await measure_drain(prefetch, args.messages, args.rounds)
        rows.append(row)
        print(f"{prefetch:>8} {row.orderlane_per_second:>12,.0f} {row.raw_per_second:>10,.0f} {row.ratio:>6.2f}")
    print(f"results: {save('drain', rows)}")


async def intake(args: argparse.Namespace) -> None:
    rows = []
    print(
        f"{'clients':>7} {'api/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'raw/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'ratio':>6}"
    )
    for concurrency in args.concurrency:
        row = await measure_intake(concurrency, args.seconds, args.port)
        rows.append(row)
        print(
            f"{concurrency:>8} {row.api.per_second:>8,.0f} {row.api.p50_ms:>8.1f} {row.api.p99_ms:>8.1f} "
            f"{row.raw.per_second:>8,.0f} {row.raw.p50_ms:>8.1f} {row.raw.p99_ms:>8.1f} {row.ratio:>8.2f}"
        )
    print(f"results: {save('intake', rows)}")


async def priority(args: argparse.Namespace) -> None:
    rows = []
    header = ("consumer", "prefetch", "handler", "p50 ms", "p99 ms", "max ms", "overtook", "met bl", "regular/s")
    print(" ".join(f"{name:>9}" for name in header))
    for handler_ms in args.handler_ms:
        for prefetch in args.prefetch:
            for consumer in ("orderlane", "raw"):
                row = await measure_priority(consumer, prefetch, handler_ms, args.backlog, args.vips, args.interval)
                rows.append(row)
                print(
                    f"{consumer:>9} {prefetch:>9} {handler_ms:>9g} {row.wait_p50_ms:>9.1f} {row.wait_p99_ms:>9.1f} "
                    f"{row.wait_max_ms:>9.1f} {row.overtaken_mean:>9.1f} {row.met_backlog:>9} "
                    f"{row.regular_per_second:>9,.0f}"
                )
    print(f"results: {save('priority', rows)}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    scenarios = parser.add_subparsers(dest="scenario", required=True)
    drain_parser = scenarios.add_parser("drain", help="consumer throughput against prefetch, beside raw aio-pika")
    drain_parser.add_argument("--prefetch", type=int, nargs="+", default=[1, 4, 16, 32, 64, 128, 256])
    drain_parser.add_argument("--messages", type=int, default=20_000)
    drain_parser.add_argument("--rounds", type=int, default=3)
    intake_parser = scenarios.add_parser("intake", help="POST /orders under wrk, beside raw confirmed publishing")
    intake_parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    intake_parser.add_argument("--seconds", type=float, default=5)
    intake_parser.add_argument("--port", type=int, default=8765)
    priority_parser = scenarios.add_parser("priority", help="VIP wait behind a backlog, against prefetch and handler")
    priority_parser.add_argument("--prefetch", type=int, nargs="+", default=[1, 10, 32, 50, 200])
    priority_parser.add_argument("--handler-ms", type=float, nargs="+", default=[1, 5, 20])
    priority_parser.add_argument("--backlog", type=int, default=5000)
    priority_parser.add_argument("--vips", type=int, default=20)
    priority_parser.add_argument("--interval", type=float, default=0.1, help="seconds between VIP orders")
    args = parser.parse_args()
    asyncio.run({"drain": drain, "intake": intake, "priority": priority}[args.scenario](args))


if __name__ == "__main__":
    main()
