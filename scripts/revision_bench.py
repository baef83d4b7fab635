"""The priority and intake figures of one revision, for comparing two revisions on one machine in one sitting:
priority at 5 ms behind 40,000 orders (orderlane at its defaults, VIPs published and posted over HTTP, raw aio-pika
at prefetch 200) and intake at 32 connections for 5 s. Prints one JSON line, tagged with the first argument.

    git worktree add /tmp/before <revision>
    for round in 1 2; do for tree in /tmp/before "$PWD"; do
      (cd "$tree" && PYTHONPATH="$tree" .venv/bin/python scripts/revision_bench.py "$tree"); done; done

(the venv of the current checkout runs both; PYTHONPATH makes each tree import its own code.)"""

from __future__ import annotations

import json
import sys
from typing import Any

import uvloop

from bench.intake import measure_intake
from bench.priority import SYSTEMS, measure_priority
from tests.processes import free_port

MEASURED = ("orderlane", "orderlane, VIPs over HTTP", "raw p200")


async def measure() -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for system in (system for system in SYSTEMS if system.name in MEASURED):
        result = await measure_priority(system, 5, 40_000, 20, 0.1, 1.5)
        figures[system.name] = {
            "per_second": result.regular_per_second,
            "vip_wait_p50_ms": result.wait_p50_ms,
            "vip_wait_max_ms": result.wait_max_ms,
            "conclusive": result.conclusive,
        }
    intake = await measure_intake(32, 5, free_port())
    figures["intake"] = {"api": intake.api.per_second, "raw": intake.raw.per_second, "errors": intake.api.errors}
    return figures


if __name__ == "__main__":
    print(sys.argv[1], json.dumps(uvloop.run(measure())))
