"""Where results go: a JSON file and a PNG plot per scenario, in bench/results/."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt

from bench.drain import DrainResult
from bench.endtoend import EndToEndResult
from bench.intake import IntakeResult
from bench.priority import PriorityResult
from bench.status import StatusResult

RESULTS = Path(__file__).with_name("results")


def _row(result: Any) -> dict[str, Any]:
    assert is_dataclass(result)
    row = asdict(result)  # type: ignore[arg-type]
    if hasattr(result, "ratio"):
        row["ratio"] = result.ratio
    return row


def save_json(scenario: str, results: Sequence[Any], command: str) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{scenario}.json"
    document = {
        "scenario": scenario,
        "command": command,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.platform()},
        "rows": [_row(result) for result in results],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def plot_intake(results: Sequence[IntakeResult]) -> Path:
    figure, (rate, latency) = plt.subplots(1, 2, figsize=(11, 4))
    clients = [r.concurrency for r in results]
    rate.plot(clients, [r.api.per_second for r in results], "o-", label="orderlane API (HTTP, wrk)")
    rate.plot(clients, [r.raw.per_second for r in results], "s--", label="raw aio-pika publish + confirm")
    rate.set(xscale="log", xlabel="concurrent clients", ylabel="orders / s", title="Intake")
    latency.plot(clients, [r.api.p99_ms for r in results], "o-", label="API p99")
    latency.plot(clients, [r.api.p50_ms for r in results], "o:", label="API p50")
    latency.plot(clients, [r.raw.p99_ms for r in results], "s--", label="raw p99")
    latency.set(xscale="log", xlabel="concurrent clients", ylabel="ms", title="Latency")
    return _finish(figure, [rate, latency], "intake")


def plot_drain(results: Sequence[DrainResult]) -> Path:
    figure, axis = plt.subplots(figsize=(7, 4))
    fixed = [r for r in results if r.prefetch != "auto"]
    prefetch = [r.prefetch for r in fixed]
    axis.plot(prefetch, [r.orderlane_per_second for r in fixed], "o-", label="orderlane, concurrency = prefetch")
    axis.plot(prefetch, [r.raw_per_second or 0.0 for r in fixed], "s--", label="raw aio-pika consumer")
    for auto in (r for r in results if r.prefetch == "auto"):
        axis.axhline(auto.orderlane_per_second, color="black", linestyle=":", label="orderlane defaults (auto)")
    axis.set(xscale="log", xlabel="prefetch", ylabel="orders / s", title="Drain (no-op handler)")
    return _finish(figure, [axis], "drain")


def plot_priority(results: Sequence[PriorityResult], scenario: str = "priority") -> Path:
    """Per handler time, one point per system: regular throughput against the VIP wait (p50, bar up to max)."""
    handlers = sorted({r.handler_ms for r in results})
    figure, axes = plt.subplots(1, len(handlers), figsize=(5.5 * len(handlers), 4.5), squeeze=False)
    for axis, handler_ms in zip(axes[0], handlers, strict=True):
        for result in (r for r in results if r.handler_ms == handler_ms):
            marker = "o" if result.system.startswith("orderlane") else "s"
            axis.errorbar(
                result.regular_per_second,
                result.wait_p50_ms,
                yerr=[[0], [result.wait_max_ms - result.wait_p50_ms]],
                fmt=marker,
                capsize=3,
                alpha=1.0 if result.conclusive else 0.3,
                label=result.system if result.conclusive else f"{result.system} (inconclusive)",
            )
        axis.set(
            yscale="log",
            xlabel="regular orders / s while the VIPs came",
            ylabel="VIP wait, ms (p50, bar to max)",
            title=f"{handler_ms:g} ms handler",
        )
    return _finish(figure, list(axes[0]), scenario)


def plot_end_to_end(results: Sequence[EndToEndResult]) -> Path:
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for result in results:
        levels = [level.priority for level in result.levels]
        axis.plot(levels, [level.p50_ms for level in result.levels], "o-", label="p50")
        axis.plot(levels, [level.p99_ms for level in result.levels], "s--", label="p99")
        axis.plot(levels, [level.max_ms for level in result.levels], "^:", label="max")
        title = (
            f"HTTP post to handler start, {result.rate:g} orders/s posted for {result.seconds:g} s, "
            f"{result.handler_ms:g} ms handler, prefetch {result.prefetch}"
        )
        axis.set(yscale="log", xlabel="effective priority (0 = most urgent)", ylabel="ms", title=title)
        axis.set_xticks(levels)
    axis.title.set_fontsize("small")
    return _finish(figure, [axis], "endtoend")


def plot_status(results: Sequence[StatusResult]) -> Path:
    """Per path, the store off and on: a bar for the median, a dot for each round."""
    figure, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 4), squeeze=False)
    for axis, result in zip(axes[0], results, strict=True):
        for x, (label, side) in enumerate((("store off", result.off), ("store on", result.on))):
            axis.bar(x, side.per_second, width=0.6, alpha=0.6, label=f"{label}: {side.per_second:,.0f}/s")
            axis.plot([x] * len(side.rounds), side.rounds, "k.")
        axis.set_xticks([0, 1], ["off", "on"])
        axis.set(ylabel="orders / s", title=f"{result.path}: on/off {result.ratio:.2f}")
        axis.title.set_fontsize("small")
    return _finish(figure, list(axes[0]), "status")


def _finish(figure: Any, axes: Sequence[Any], scenario: str) -> Path:
    for axis in axes:
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize="small")
    figure.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{scenario}.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
