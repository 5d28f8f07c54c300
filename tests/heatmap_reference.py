"""The run heatmap as it was drawn before it was made faster (cell by cell, a dataclass per
cell, times formatted per rectangle), kept as the reference the faster drawing must match.

Only ``tests/test_web_history.py`` uses it.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from datagraph.history import EdgeHistory, ProcessorHistory, RunHistory
from datagraph.snapshots import INPUT, OUTPUT
from web import overlay

__all__ = ["heatmap"]

#: Most time buckets drawn: an hour at one column per 30 s, or every second of two minutes.
MAX_COLUMNS = 120
#: Geometry, in SVG user units (the SVG scales to its box; text stays at least 11 px there).
LABEL_WIDTH = 300
PLOT_WIDTH = 900
#: Characters of a row label that fit (12 px monospace); longer ones are cut, whole in the tooltip.
LABEL_CHARS = 40
ROW_HEIGHT = 16
ROW_GAP = 3
AXIS_HEIGHT = 22
#: Throughput classes, lowest to highest share of the row's peak.
THROUGHPUT_CLASSES = ("tp-0", "tp-1", "tp-2", "tp-3", "tp-4")
#: Processor band classes by dominant activity.
ACTIVITY_CLASSES = {"busy": "band-busy", "backpressured": "band-bp", "idle": "band-idle"}


@dataclass(frozen=True)
class Heatmap:
    """Both drawings of one history (switched between by the page without a request)."""

    fill: Markup
    throughput: Markup
    columns: int
    #: Seconds one column covers.
    column_seconds: float


@dataclass(frozen=True)
class _Cell:
    css: str
    title: str


def heatmap(history: RunHistory, *, max_columns: int = MAX_COLUMNS) -> Heatmap | None:
    """The heatmaps of ``history``, or None while it has no sample."""
    if not history.t:
        return None
    columns = max(1, min(max_columns, len(history.t)))
    grid = Buckets(history.t, columns)
    spans = grid.spans
    fill_rows = [(_edge_label(e), _fill_cells(e, grid)) for e in history.edges]
    rate_rows = [(_edge_label(e), _throughput_cells(e, grid)) for e in history.edges]
    bands = [(p.name, _band_cells(p, grid)) for p in history.processors]
    column_seconds = (spans[-1][1] - spans[0][0]) / columns
    return Heatmap(
        fill=_svg(fill_rows, bands, spans, "queue fill against the backpressure limit"),
        throughput=_svg(rate_rows, bands, spans, "throughput against each edge's peak"),
        columns=columns,
        column_seconds=column_seconds,
    )


def sparkline(values: Sequence[float], *, css: str, label: str, width: int = 90, height: int = 18) -> Markup:
    """A small line of ``values`` (scaled to their peak), with ``label`` as its accessible name."""
    if len(values) < 2:
        return Markup("")
    peak = max(values) or 1.0
    step = width / (len(values) - 1)
    points = " ".join(
        f"{i * step:.1f},{height - 1 - (v / peak) * (height - 2):.1f}" for i, v in enumerate(values)
    )
    return Markup(
        f'<svg class="spark {escape(css)}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(label)}"><title>{escape(label)}</title>'
        f'<polyline points="{points}"/></svg>'
    )


# -- cells -------------------------------------------------------------------------------


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def _when(span: tuple[float, float]) -> str:
    return f"{_clock(span[0])}\u2013{_clock(span[1])}"


def _edge_label(edge: EdgeHistory) -> str:
    source = "input" if edge.source == INPUT else edge.source
    target = "caller" if edge.target == OUTPUT else edge.target
    return f"{edge.io}: {source} \u2192 {target}"


def _fill_cells(edge: EdgeHistory, grid: Buckets) -> list[_Cell | None]:
    backlog = grid.resample(edge.backlog)
    rate = grid.resample(edge.throughput)
    fill = grid.resample(edge.fill) if edge.backpressure_limit else [None] * len(grid)
    limit = f" of {overlay.format_count(edge.backpressure_limit)}" if edge.backpressure_limit else ""
    cells: list[_Cell | None] = []
    previous: tuple[object, ...] | None = None
    for queued, moving, full in zip(backlog, rate, fill, strict=True):
        if queued is None:
            cells.append(None)
            continue
        figures = (queued, moving, full)
        if figures == previous:
            cells.append(cells[-1])  # the same cell again: merged when drawn
            continue
        previous = figures
        css = overlay.fill_heat(full, moving=queued > 0 or (moving or 0) > 0)
        queue = f"{overlay.format_count(queued)} queued"
        if full is not None:
            queue += f" ({full:.0%}{limit})"
        cells.append(_Cell(css, f"{queue}, {overlay.format_rate(moving or 0.0)}"))
    return cells


def _throughput_cells(edge: EdgeHistory, grid: Buckets) -> list[_Cell | None]:
    rate = grid.resample(edge.throughput)
    peak = max((r for r in rate if r is not None), default=0.0)
    shown_peak = overlay.format_rate(peak)
    cells: list[_Cell | None] = []
    for r in rate:
        if r is None:
            cells.append(None)
            continue
        level = 0 if r <= 0 or peak <= 0 else 1 + min(3, int(r / peak * 4 - 1e-9))
        cells.append(_Cell(THROUGHPUT_CLASSES[level], f"{overlay.format_rate(r)} (peak {shown_peak})"))
    return cells


def _band_cells(processor: ProcessorHistory, grid: Buckets) -> list[_Cell | None]:
    busy = grid.resample(processor.busy, mean=True)
    held = grid.resample(processor.backpressured, mean=True)
    idle = grid.resample(processor.idle, mean=True)
    states = grid.last(processor.state, "pending")
    cells: list[_Cell | None] = []
    for b, h, i, state in zip(busy, held, idle, states, strict=True):
        if b is None or h is None or i is None:
            cells.append(None)
        elif state != "running":
            cells.append(_Cell(f"band-{state}", state))
        elif b + h + i <= 0:
            cells.append(_Cell("band-pending", "running, no time reported yet (waiting to start reading)"))
        else:
            shares = {"busy": b, "backpressured": h, "idle": i}
            top = max(shares, key=shares.__getitem__)
            split = f"busy {b:.0%}, backpressured {h:.0%}, idle {i:.0%}"
            cells.append(_Cell(ACTIVITY_CLASSES[top], split))
    return cells


# -- drawing -------------------------------------------------------------------------------


def _svg(
    rows: Sequence[tuple[str, list[_Cell | None]]],
    bands: Sequence[tuple[str, list[_Cell | None]]],
    spans: Sequence[tuple[float, float]],
    caption: str,
) -> Markup:
    columns = len(spans)
    cell = PLOT_WIDTH / columns
    pitch = ROW_HEIGHT + ROW_GAP
    band_top = len(rows) * pitch + (ROW_GAP * 3 if bands else 0)
    height = band_top + len(bands) * pitch + AXIS_HEIGHT
    width = LABEL_WIDTH + PLOT_WIDTH
    parts = [
        f'<svg class="heatmap" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(caption)}"><title>{escape(caption)}</title>'
    ]
    for index, (label, cells) in enumerate(rows):
        parts.append(_row(label, cells, spans, index * pitch, cell, "edge-row"))
    for index, (label, cells) in enumerate(bands):
        parts.append(_row(label, cells, spans, band_top + index * pitch, cell, "band-row"))
    axis = height - AXIS_HEIGHT + 14
    middle = spans[columns // 2][0] if columns > 2 else None
    parts.append(f'<text class="axis" x="{LABEL_WIDTH}" y="{axis}">{_clock(spans[0][0])}</text>')
    if middle is not None:
        parts.append(
            f'<text class="axis" x="{LABEL_WIDTH + PLOT_WIDTH / 2:.0f}" y="{axis}" '
            f'text-anchor="middle">{_clock(middle)}</text>'
        )
    parts.append(
        f'<text class="axis" x="{width}" y="{axis}" text-anchor="end">{_clock(spans[-1][1])}</text></svg>'
    )
    return Markup("".join(parts))


def _row(
    label: str,
    cells: Sequence[_Cell | None],
    spans: Sequence[tuple[float, float]],
    top: float,
    cell: float,
    css: str,
) -> str:
    text_y = top + ROW_HEIGHT - 4
    shown = label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "\u2026"
    parts = [
        f'<g class="{css}" data-label="{escape(label)}"><text class="row-label" x="{LABEL_WIDTH - 8}" '
        f'y="{text_y:.0f}" text-anchor="end">{escape(shown)}<title>{escape(label)}</title></text>'
    ]
    start = 0
    for index in range(1, len(cells) + 1):
        if index < len(cells) and cells[index] == cells[start]:
            continue  # the same look and figures: one rectangle for the run of cells
        current = cells[start]
        if current is not None:
            x = LABEL_WIDTH + start * cell
            span = (spans[start][0], spans[index - 1][1])
            title = f"{_when(span)}: {current.title}"
            parts.append(
                f'<rect class="{current.css}" x="{x:.1f}" y="{top:.0f}" width="{(index - start) * cell:.1f}" '
                f'height="{ROW_HEIGHT}"><title>{escape(title)}</title></rect>'
            )
        start = index
    parts.append("</g>")
    return "".join(parts)


# -- the time buckets as they were (datagraph.history.Buckets before its one-slice path) --


class Buckets:
    """Equal time buckets over a history's samples, for heatmaps.

    ``spans`` are the buckets' ``(start, end)`` times; each series sampled at
    the same times is reduced per bucket with one slice per bucket.
    """

    def __init__(self, t: Sequence[float], count: int) -> None:
        self.spans: list[tuple[float, float]] = []
        #: Per bucket, the samples in it as a slice ``[lo, hi)`` of the series.
        self._ranges: list[tuple[int, int]] = []
        if not t or count <= 0:
            return
        first, last = t[0], t[-1]
        width = max(last - first, 1e-9) / count
        self.spans = [(first + i * width, first + (i + 1) * width) for i in range(count)]
        lo = 0
        for index in range(count):
            hi = lo
            if index == count - 1:
                hi = len(t)
            else:
                stop = self.spans[index][1]
                while hi < len(t) and t[hi] < stop:
                    hi += 1
            self._ranges.append((lo, hi))
            lo = hi

    def __len__(self) -> int:
        return len(self.spans)

    def resample(self, values: Sequence[float], *, mean: bool = False) -> list[float | None]:
        """The largest (or the mean) value sampled in each bucket.

        A bucket with no sample repeats the last value; None before the first
        sample.  Largest by default, so that a queue that filled for one
        second shows in a bucket of a minute; the mean suits shares of time.
        """
        out: list[float | None] = []
        last: float | None = None
        for lo, hi in self._ranges:
            if hi > lo:
                chunk = values[lo:hi]
                last = sum(chunk) / (hi - lo) if mean else max(chunk)
            out.append(last)
        return out

    def last(self, values: Sequence[str], before: str) -> list[str]:
        """The last value in each bucket (or before it; ``before`` ahead of the first)."""
        out = []
        current = before
        for lo, hi in self._ranges:
            if hi > lo:
                current = values[hi - 1]
            out.append(current)
        return out
