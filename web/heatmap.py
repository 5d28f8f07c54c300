"""A run's history drawn as SVG on the server: the edge x time heatmap and sparklines.

One row per edge in flow order, one column per time bucket, coloured by queue
fill against the backpressure limit with the live overlay's classes
(:func:`web.overlay.fill_heat`), or by throughput against the row's own peak;
below them, a band per processor coloured by where its time went (busy,
backpressured, idle). Neighbouring cells that look the same are drawn as one
rectangle, so a long quiet run stays small; every rectangle has a ``<title>``
with its times and exact figures, which browsers show on hover. Colours are
classes (``static/dashboard.css``), never inline styles.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from datagraph.history import Buckets, EdgeHistory, ProcessorHistory, RunHistory
from datagraph.snapshots import INPUT, OUTPUT

from . import overlay

__all__ = ["MAX_COLUMNS", "Heatmap", "heatmap", "sparkline"]

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


#: A cell: its class and the figures shown on hover, escaped (None: before the first sample).
#: Plain tuples, so that neighbouring cells compare (and merge) at C speed.
_Cell = tuple[str, str]


def heatmap(history: RunHistory, *, max_columns: int = MAX_COLUMNS) -> Heatmap | None:
    """The heatmaps of ``history``, or None while it has no sample.

    Each edge's throughput is resampled once for both drawings, the processor
    bands are drawn once for both, and a cell's figures are formatted once per
    distinct value in its row; times are formatted once per column.
    """
    if not history.t:
        return None
    columns = max(1, min(max_columns, len(history.t)))
    grid = Buckets(history.t, columns)
    spans = grid.spans
    clocks = _Clocks(spans)
    fill_rows = []
    rate_rows = []
    for edge in history.edges:
        label = _edge_label(edge)
        rate = grid.resample(edge.throughput)
        fill_rows.append((label, _fill_cells(edge, grid, rate)))
        rate_rows.append((label, _throughput_cells(rate)))
    bands = [(p.name, _band_cells(p, grid)) for p in history.processors]
    column_seconds = (spans[-1][1] - spans[0][0]) / columns
    drawn_bands = _bands(bands, clocks, len(fill_rows))
    return Heatmap(
        fill=_svg(fill_rows, drawn_bands, clocks, "queue fill against the backpressure limit"),
        throughput=_svg(rate_rows, drawn_bands, clocks, "throughput against each edge's peak"),
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


def _escaped(text: str) -> str:
    return str(escape(text))


class _Clocks:
    """The columns' start and end times as text (digits and colons: nothing to escape),
    formatted once per column."""

    def __init__(self, spans: Sequence[tuple[float, float]]) -> None:
        self.spans = spans
        self.starts = [_clock(start) for start, _ in spans]
        self.ends = [_clock(end) for _, end in spans]
        cell = PLOT_WIDTH / len(spans) if spans else 0.0
        #: Each column's x, and the width of a rectangle over n columns (index n), as drawn.
        self.xs = [f"{LABEL_WIDTH + column * cell:.1f}" for column in range(len(spans))]
        self.widths = [f"{n * cell:.1f}" for n in range(len(spans) + 1)]

    def when(self, first: int, last: int) -> str:
        """From column ``first``'s start to column ``last``'s end (two clock times, en dash)."""
        return f"{self.starts[first]}\u2013{self.ends[last]}"


def _edge_label(edge: EdgeHistory) -> str:
    source = "input" if edge.source == INPUT else edge.source
    target = "caller" if edge.target == OUTPUT else edge.target
    return f"{edge.io}: {source} \u2192 {target}"


def _fill_cells(edge: EdgeHistory, grid: Buckets, rate: Sequence[float | None]) -> list[_Cell | None]:
    backlog = grid.resample(edge.backlog)
    fill = grid.resample(edge.fill) if edge.backpressure_limit else [None] * len(grid)
    limit = f" of {overlay.format_count(edge.backpressure_limit)}" if edge.backpressure_limit else ""
    cells: list[_Cell | None] = []
    known: dict[tuple[float, float | None, float | None], _Cell] = {}
    for queued, moving, full in zip(backlog, rate, fill, strict=True):
        if queued is None:
            cells.append(None)
            continue
        figures = (queued, moving, full)
        cell = known.get(figures)
        if cell is None:
            css = overlay.fill_heat(full, moving=queued > 0 or (moving or 0) > 0)
            queue = f"{overlay.format_count(queued)} queued"
            if full is not None:
                queue += f" ({full:.0%}{limit})"
            cell = known[figures] = (css, _escaped(f"{queue}, {overlay.format_rate(moving or 0.0)}"))
        cells.append(cell)
    return cells


def _throughput_cells(rate: Sequence[float | None]) -> list[_Cell | None]:
    peak = max((r for r in rate if r is not None), default=0.0)
    shown_peak = overlay.format_rate(peak)
    cells: list[_Cell | None] = []
    known: dict[float, _Cell] = {}
    for r in rate:
        if r is None:
            cells.append(None)
            continue
        cell = known.get(r)
        if cell is None:
            level = 0 if r <= 0 or peak <= 0 else 1 + min(3, int(r / peak * 4 - 1e-9))
            cell = known[r] = (
                THROUGHPUT_CLASSES[level], _escaped(f"{overlay.format_rate(r)} (peak {shown_peak})")
            )
        cells.append(cell)
    return cells


def _band_cells(processor: ProcessorHistory, grid: Buckets) -> list[_Cell | None]:
    busy = grid.resample(processor.busy, mean=True)
    held = grid.resample(processor.backpressured, mean=True)
    idle = grid.resample(processor.idle, mean=True)
    states = grid.last(processor.state, "pending")
    cells: list[_Cell | None] = []
    #: One cell per state other than running (an ended run's band is one state throughout).
    stated: dict[str, _Cell] = {}
    for b, h, i, state in zip(busy, held, idle, states, strict=True):
        if b is None or h is None or i is None:
            cells.append(None)
        elif state != "running":
            cell = stated.get(state)
            if cell is None:
                # A state is whatever a worker wrote to the store: escaped in the class too.
                shown = _escaped(state)
                cell = stated[state] = (f"band-{shown}", shown)
            cells.append(cell)
        elif b + h + i <= 0:
            cells.append(("band-pending", "running, no time reported yet (waiting to start reading)"))
        else:
            # The dominant activity; on a tie the first of busy, backpressured, idle.
            top = "busy" if b >= h and b >= i else "backpressured" if h >= i else "idle"
            # Words, digits and percent signs: nothing to escape.
            split = f"busy {_percent(b)}, backpressured {_percent(h)}, idle {_percent(i)}"
            cells.append((ACTIVITY_CLASSES[top], split))
    return cells


#: "0%" to "100%", as ``f"{share:.0%}"`` writes them.
_PERCENTS = [f"{n}%" for n in range(101)]


def _percent(share: float) -> str:
    """``f"{share:.0%}"``, looked up: the share times 100, rounded half to even as formatting does."""
    n = round(share * 100)
    return _PERCENTS[n] if 0 <= n <= 100 else f"{share:.0%}"


# -- drawing -------------------------------------------------------------------------------


def _bands(
    bands: Sequence[tuple[str, list[_Cell | None]]], clocks: _Clocks, edge_rows: int
) -> list[str]:
    """The processor bands, drawn once for both heatmaps (they are the same in each)."""
    pitch = ROW_HEIGHT + ROW_GAP
    band_top = edge_rows * pitch + (ROW_GAP * 3 if bands else 0)
    return [
        _row(label, cells, clocks, band_top + index * pitch, "band-row")
        for index, (label, cells) in enumerate(bands)
    ]


def _svg(
    rows: Sequence[tuple[str, list[_Cell | None]]],
    bands: Sequence[str],
    clocks: _Clocks,
    caption: str,
) -> Markup:
    spans = clocks.spans
    columns = len(spans)
    pitch = ROW_HEIGHT + ROW_GAP
    band_top = len(rows) * pitch + (ROW_GAP * 3 if bands else 0)
    height = band_top + len(bands) * pitch + AXIS_HEIGHT
    width = LABEL_WIDTH + PLOT_WIDTH
    parts = [
        f'<svg class="heatmap" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(caption)}"><title>{escape(caption)}</title>'
    ]
    for index, (label, cells) in enumerate(rows):
        parts.append(_row(label, cells, clocks, index * pitch, "edge-row"))
    parts.extend(bands)
    axis = height - AXIS_HEIGHT + 14
    middle = clocks.starts[columns // 2] if columns > 2 else None
    parts.append(f'<text class="axis" x="{LABEL_WIDTH}" y="{axis}">{clocks.starts[0]}</text>')
    if middle is not None:
        parts.append(
            f'<text class="axis" x="{LABEL_WIDTH + PLOT_WIDTH / 2:.0f}" y="{axis}" '
            f'text-anchor="middle">{middle}</text>'
        )
    parts.append(
        f'<text class="axis" x="{width}" y="{axis}" text-anchor="end">{clocks.ends[-1]}</text></svg>'
    )
    return Markup("".join(parts))


def _row(
    label: str,
    cells: Sequence[_Cell | None],
    clocks: _Clocks,
    top: float,
    css: str,
) -> str:
    """One row: its label, then a rectangle per run of neighbouring cells that look the same."""
    text_y = top + ROW_HEIGHT - 4
    shown = label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "\u2026"
    parts = [
        f'<g class="{css}" data-label="{escape(label)}"><text class="row-label" x="{LABEL_WIDTH - 8}" '
        f'y="{text_y:.0f}" text-anchor="end">{escape(shown)}<title>{escape(label)}</title></text>'
    ]
    y = f"{top:.0f}"
    count = len(cells)
    start = 0
    while start < count:
        current = cells[start]
        index = start + 1
        while index < count and cells[index] == current:
            index += 1  # the same look and figures: one rectangle for the run of cells
        if current is not None:
            css_class, title = current
            parts.append(
                f'<rect class="{css_class}" x="{clocks.xs[start]}" y="{y}" '
                f'width="{clocks.widths[index - start]}" height="{ROW_HEIGHT}">'
                f"<title>{clocks.when(start, index - 1)}: {title}</title></rect>"
            )
        start = index
    parts.append("</g>")
    return "".join(parts)
