"""Line charts written as SVG by hand: panels stacked on one x axis, each with its own y axis, lines and legend.
A plot that is only lines needs no plotting library (bench/report.py's PNGs use matplotlib, the `bench` extra's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from xml.sax.saxutils import escape

WIDTH: Final = 860
PANEL_HEIGHT: Final = 240
LEFT: Final = 70
RIGHT: Final = 20
TOP: Final = 40
BOTTOM: Final = 45
"""Margins of each panel's plotting area, in pixels."""
HEADER: Final = 30
FOOTER: Final = 20
TICKS: Final = 5
LEGEND_WIDTH: Final = 230


@dataclass(frozen=True, slots=True)
class Line:
    label: str
    points: Sequence[tuple[float, float]]
    color: str
    dashed: bool = False
    dots: bool = False
    """A dot at each point too: for sparse points, such as one per order."""


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    y_label: str
    lines: Sequence[Line]


def ticks(top: float) -> list[float]:
    """From 0 to at least `top` in about TICKS steps of 1, 2 or 5 times a power of ten."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / TICKS
    power = 10 ** math.floor(math.log10(raw))
    step = next(step * power for step in (1, 2, 5, 10) if step * power >= raw)
    return [step * n for n in range(math.ceil(top / step - 1e-9) + 1)]


@dataclass(frozen=True, slots=True)
class Frame:
    """Where a panel's values go in the picture: its plotting area, `top` pixels down, and its axes' ends."""

    top: float
    x_end: float
    y_end: float

    @property
    def bottom(self) -> float:
        return self.top + PANEL_HEIGHT - TOP - BOTTOM

    def x(self, value: float) -> float:
        return LEFT + value / self.x_end * (WIDTH - LEFT - RIGHT)

    def y(self, value: float) -> float:
        return self.bottom - value / self.y_end * (self.bottom - self.top)


def _number(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:g}"


def _text(x: float, y: float, content: str, *, anchor: str = "middle", size: int = 11, extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}"{extra}>{escape(content)}</text>'


def _segment(x1: float, y1: float, x2: float, y2: float, stroke: str, extra: str = "") -> str:
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}"{extra}/>'


def _axes(panel: Panel, frame: Frame, x_ticks: Sequence[float], y_ticks: Sequence[float]) -> list[str]:
    middle = (frame.top + frame.bottom) / 2
    parts = [_text(WIDTH / 2, frame.top - 14, panel.title, size=13, extra=' font-weight="bold"')]
    for value in y_ticks:
        parts.append(_segment(LEFT, frame.y(value), WIDTH - RIGHT, frame.y(value), "#ddd"))
        parts.append(_text(LEFT - 6, frame.y(value) + 4, _number(value), anchor="end"))
    for value in x_ticks:
        parts.append(_segment(frame.x(value), frame.top, frame.x(value), frame.bottom, "#eee"))
        parts.append(_text(frame.x(value), frame.bottom + 16, _number(value)))
    parts.append(_text(16, middle, panel.y_label, extra=f' transform="rotate(-90 16 {middle:.1f})"'))
    return parts


def _legend_box(frame: Frame, entries: int) -> str:
    """White, a little see-through, behind the legend's entries: lines may pass under it."""
    return (
        f'<rect x="{WIDTH - RIGHT - LEGEND_WIDTH - 6}" y="{frame.top}" width="{LEGEND_WIDTH}" '
        f'height="{16 * entries + 6}" fill="white" fill-opacity="0.85"/>'
    )


def _line(line: Line, frame: Frame) -> list[str]:
    """The line, and its dots if it has them."""
    points = [(frame.x(x), frame.y(y)) for x, y in line.points]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    parts = [f'<polyline fill="none" stroke="{line.color}" stroke-width="1.5"{_dash(line)} points="{path}"/>']
    if line.dots:
        parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{line.color}"/>' for x, y in points]
    return parts


def _legend(line: Line, frame: Frame, position: int) -> list[str]:
    """The line's entry in its panel's legend, the `position`th from the top."""
    left, baseline = WIDTH - RIGHT - LEGEND_WIDTH, frame.top + 14 + 16 * position
    return [
        _segment(left, baseline - 4, left + 20, baseline - 4, line.color, f' stroke-width="2"{_dash(line)}'),
        _text(left + 26, baseline, line.label, anchor="start"),
    ]


def _dash(line: Line) -> str:
    return ' stroke-dasharray="6 4"' if line.dashed else ""


def write_svg(path: Path, title: str, x_label: str, panels: Sequence[Panel]) -> Path:
    """The panels one under the other on a shared x axis from 0 to the last point, `title` above them and `x_label`
    below."""
    x_end = max((x for panel in panels for line in panel.lines for x, _ in line.points), default=1.0)
    x_ticks = [x for x in ticks(x_end) if x <= x_end]  # the time axis ends with the data; a y axis at a tick
    height = HEADER + PANEL_HEIGHT * len(panels) + FOOTER
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        _text(WIDTH / 2, 20, title, size=14, extra=' font-weight="bold"'),
    ]
    for number, panel in enumerate(panels):
        y_ticks = ticks(max((y for line in panel.lines for _, y in line.points), default=0.0))
        frame = Frame(HEADER + number * PANEL_HEIGHT + TOP, x_end, y_ticks[-1])
        parts += _axes(panel, frame, x_ticks, y_ticks)
        for line in panel.lines:
            parts += _line(line, frame)
        parts.append(_legend_box(frame, len(panel.lines)))
        parts += [part for position, line in enumerate(panel.lines) for part in _legend(line, frame, position)]
    parts += [_text(WIDTH / 2, height - 6, x_label), "</svg>"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n")
    return path
