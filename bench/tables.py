"""The console table of each scenario's results (`python -m bench` prints them; docs/benchmarks.md quotes them)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from bench.drain import DrainResult
from bench.endtoend import EndToEndResult
from bench.flood import CLIENTS as FLOOD_CLIENTS
from bench.flood import FLOOD_CONNECTIONS, FloodResult
from bench.intake import IntakeResult
from bench.memory import MemoryResult
from bench.peer_intake import CLIENTS as PEER_CLIENTS
from bench.peer_intake import PeerIntakeResult
from bench.priority import PriorityResult
from bench.scale import ScaleResult
from bench.sharing import SharingResult
from bench.status import StatusResult


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(header)] + [
        [f"{cell:,.1f}" if isinstance(cell, float) else str(cell) for cell in row] for row in rows
    ]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    return "\n".join(" ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in cells)


def show_end_to_end(results: list[EndToEndResult]) -> str:
    header = ("priority", "orders", "p50 ms", "p99 ms", "max ms")
    return table(header, [(x.priority, x.orders, x.p50_ms, x.p99_ms, x.max_ms) for x in results[0].levels])


def show_sharing(results: list[SharingResult]) -> str:
    header = ("processes", "orders/s", "handled by each", "most held by each", "idle while another held, ms")
    rows = [
        (
            r.processes,
            r.per_second,
            " ".join(f"{n:,}" for n in r.handled),
            " ".join(str(n) for n in r.most_held),
            " ".join(f"{ms:.0f}" for ms in r.idle_while_others_held_ms),
        )
        for r in results
    ]
    return table(header, rows)


def show_memory(results: list[MemoryResult]) -> str:
    result = results[0]
    rows = [(f"{(n + 1) * 10_000:,}", rss) for n, rss in enumerate(result.rss_mb)]
    return table(("orders", "RSS MB"), rows) + f"\ngrowth: {result.growth_mb:.1f} MB"


def show_status(results: list[StatusResult]) -> str:
    header = ("path", "off/s", "on/s", "ratio", "off p50", "off tail", "on p50", "on tail", "unexpected off/on")
    rows = [
        (
            r.path,
            r.off.per_second,
            r.on.per_second,
            f"{r.ratio:.2f}",
            r.off.p50_ms or "-",
            r.off.p99_ms or "-",
            r.on.p50_ms or "-",
            r.on.p99_ms or "-",
            f"{r.off.unexpected}/{r.on.unexpected}",
        )
        for r in results
    ]
    notes = "(medians of the rounds; latencies in ms, tail: p99 of a request or the longest VIP wait; unexpected: 0)"
    return table(header, rows) + "\n" + notes + "\n\n" + show_status_cpu(results)


def show_status_cpu(results: list[StatusResult]) -> str:
    """Each path's CPU per order, off and on: the process under test (the API or the consumer), Redis, the broker."""
    services = ("process", "redis", "broker")
    header = ("path", *(f"off {what}" for what in services), *(f"on {what}" for what in services), "added")
    rows = []
    for r in results:
        if r.off.cpu_us and r.on.cpu_us:
            off = [r.off.cpu_us.get(what) for what in services]
            on = [r.on.cpu_us.get(what) for what in services]
            added = sum(r.on.cpu_us.values()) - sum(r.off.cpu_us.values())
            rows.append((r.path, *(cell if cell is not None else "-" for cell in (*off, *on)), added))
    notes = "(microseconds of CPU per order, medians of the rounds; added: on less off, all three together)"
    return table(header, rows) + "\n" + notes


def show_flood(results: list[FloodResult]) -> str:
    header = ("server", "alone/s", "p99 ms", "flooded 202/s", "p99 ms", "ratio", "first 202 s", "flood opened")
    rows = [
        (
            r.server,
            r.normal_per_second,
            statistics.median(run.normal.p99_ms for run in r.runs),
            r.flooded_per_second,
            statistics.median(run.flooded.p99_ms for run in r.runs),
            f"{r.ratio:.2f}",
            "none" if r.first_order_seconds is None else f"{r.first_order_seconds:.2f}",
            f"{statistics.median(run.flood_opened for run in r.runs):,.0f}",
        )
        for r in results
    ]
    notes = f"({FLOOD_CONNECTIONS:,} half-sent heads kept open beside wrk at {FLOOD_CLIENTS} clients; medians)"
    return table(header, rows) + "\n" + notes


def show_intake_peers(results: list[PeerIntakeResult]) -> str:
    orderlane, raw = results[0].per_second, results[-1].per_second
    header = ("intake", "orders/s", "p99 ms", "orderlane / it", "it / raw", "CPU µs/order", "2xx not in the queue")
    rows = [
        (
            r.intake,
            r.per_second,
            r.p99_ms,
            f"{orderlane / r.per_second:.2f}",
            f"{r.per_second / raw:.2f}",
            "-" if r.cpu_us_per_order is None else f"{r.cpu_us_per_order:.0f}",
            r.missing,
        )
        for r in results
    ]
    return table(header, rows) + f"\n({PEER_CLIENTS} clients; medians of the rounds)"


def show_scale(results: list[ScaleResult]) -> str:
    result = results[0]
    consumer_header = ("consumers", "orders/s", "x 1", "ceiling/s", "of ceiling", "rounds", "backlog outlasted window")
    consumer_rows = [
        (
            r.processes,
            r.per_second,
            f"{r.ratio:.2f}",
            f"{r.processes * result.ceiling_per_process:,.0f}",
            f"{r.per_second / (r.processes * result.ceiling_per_process):.2f}",
            " ".join(f"{run.per_second:,.0f}" for run in r.runs),
            "yes" if all(run.outlasted for run in r.runs) else "NO: drained",
        )
        for r in result.consumers
    ]
    api_header = ("API processes", "orders/s", "x 1", "p99 ms", "CPU µs/order", "rounds", "unexpected")
    api_rows = [
        (
            r.processes,
            r.per_second,
            f"{r.ratio:.2f}",
            statistics.median(run.throughput.p99_ms for run in r.runs),
            f"{statistics.median(run.cpu_us_per_order or 0 for run in r.runs):.0f}",
            " ".join(f"{run.throughput.per_second:,.0f}" for run in r.runs),
            sum(run.throughput.errors + run.missing for run in r.runs),
        )
        for r in result.api
    ]
    return "\n".join(
        [
            table(consumer_header, consumer_rows),
            f"({result.handler_ms:g} ms asyncio.sleep handler, --concurrency {result.concurrency} --prefetch "
            f"{result.concurrency} per process; medians)",
            table(api_header, api_rows),
            f"(2: python -m api --workers 2; wrk at {result.clients} clients; status store on; medians)",
        ]
    )


def show_intake(results: list[IntakeResult]) -> str:
    header = ("clients", "api/s", "p50 ms", "p99 ms", "raw/s", "raw p50", "raw p99", "ratio")
    rows = [
        (
            r.concurrency,
            r.api.per_second,
            r.api.p50_ms,
            r.api.p99_ms,
            r.raw.per_second,
            r.raw.p50_ms,
            r.raw.p99_ms,
            f"{r.ratio:.2f}",
        )
        for r in results
    ]
    return table(header, rows)


def show_drain(results: list[DrainResult]) -> str:
    header = ("prefetch", "orderlane/s", "raw/s", "ratio")
    rows = [
        (r.prefetch, r.orderlane_per_second, r.raw_per_second or "-", f"{r.ratio:.2f}" if r.ratio else "-")
        for r in results
    ]
    best_raw = max(r.raw_per_second or 0 for r in results)
    auto = [r.orderlane_per_second for r in results if r.prefetch == "auto"]
    summary = f"\ndefaults (auto) against raw aio-pika at its best prefetch: {auto[0] / best_raw:.2f}" if auto else ""
    return table(header, rows) + summary


def show_priority(results: list[PriorityResult]) -> str:
    header = ("system", "handler ms", "VIP p50 ms", "max ms", "overtook", "regular/s", "backlog outlasted VIPs")
    rows = [
        (
            r.system,
            f"{r.handler_ms:g}",
            r.wait_p50_ms,
            r.wait_max_ms,
            r.overtaken_mean,
            r.regular_per_second,
            "yes" if r.conclusive else "NO: inconclusive",
        )
        for r in results
    ]
    stepped = [r for r in results if r.steps is not None]
    return table(header, rows) + ("\n\n" + show_steps(stepped) if stepped else "")


def show_steps(results: Sequence[PriorityResult]) -> str:
    """The VIPs' path step by step (bench/steps.py), each as p50 / max in ms, and its share of the whole p50."""
    header = ("system", "handler ms", "POST->publish", "publish->received", "received->start", "whole", "p50 shares")
    rows = []
    for r in results:
        steps = r.steps
        assert steps is not None
        parts = [steps.post_to_publish, steps.publish_to_received, steps.received_to_start]
        whole = steps.total
        shares = [f"{part.p50_ms / whole.p50_ms:.0%}" if part and whole else "-" for part in parts]
        rows.append(
            (
                r.system,
                f"{r.handler_ms:g}",
                *(f"{part.p50_ms:.2f} / {part.max_ms:.2f}" if part else "-" for part in (*parts, whole)),
                " ".join(shares),
            )
        )
    notes = "(VIP path, wall clock: p50 / max ms of each step, medians of the rounds; shares: step p50 / whole p50)"
    return table(header, rows) + "\n" + notes
