"""CPU time per order: what a run cost the process under test, Redis and the broker, read from /proc (Linux).

Redis and the broker count only where they run on this host, as the benchmarks' own services do; found by their
process names, the oldest of each (a test's own copy, started later, is not the service)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

SERVICES: Final = {"redis": "redis-server", "broker": "beam.smp"}
"""What else an order costs, and the name of its process."""


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) a process and its descendants alive now (an API's workers) have used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:  # a child that ended meanwhile
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(int(child)) for child in children)


def local_pid(name: str) -> int | None:
    """The oldest process on this host whose command is `name`; None if there is none."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
            except OSError:  # ended meanwhile
                continue
    return min(found, default=None)


class CpuMeter:
    """Started at the beginning of a run: `per_order` says how many microseconds of CPU each order cost `pid` (the
    process under test: an API, or the benchmark's own process where the consumer runs), Redis and the broker
    since."""

    def __init__(self, pid: int) -> None:
        pids = {"process": pid} | {service: local_pid(name) for service, name in SERVICES.items()}
        self._pids = {what: found for what, found in pids.items() if found is not None}
        self.restart()

    def restart(self) -> None:
        """Count from now on (the processes were found once, when the meter was made)."""
        self._started = {what: cpu_seconds(found) for what, found in self._pids.items()}

    def per_order(self, orders: int) -> dict[str, float]:
        return {
            what: (cpu_seconds(self._pids[what]) - started) / max(1, orders) * 1e6
            for what, started in self._started.items()
        }
