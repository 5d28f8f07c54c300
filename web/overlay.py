"""How live figures become colours and words: the one table of thresholds.

Edges are coloured by how full their queue is against the backpressure
limit, the way Apache NiFi colours a connection: green below 60 %, yellow
from 60 % to 85 %, red above 85 %. An edge with no limit (a run's input, or an
output read by the run's caller) is green while values move and grey when
idle. Processors are coloured by state, and while running by where their
recent time went, as Flink's web UI does: busy (working), backpressured
(waiting for a slow reader) or idle (waiting for input).

The colours themselves are CSS custom properties in ``static/app.css``
(``heat-*`` and ``state-*``) and ``static/dashboard.css`` (``act-*``); this
module decides which class applies, and the legend shown under each graph is
rendered from :data:`LEGEND`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from datagraph.snapshots import EdgeSnapshot, ProcessorState

__all__ = [
    "EDGE_FILL_RED_ABOVE",
    "NO_VALUE",
    "READ_AT_END",
    "EDGE_FILL_YELLOW_FROM",
    "LEGEND",
    "ReadRates",
    "edge_heat",
    "edge_label",
    "fill_heat",
    "format_count",
    "format_duration",
    "format_rate",
    "node_classes",
    "node_status",
    "time_to_drain",
]

#: Shown where there is no figure (an en dash).
NO_VALUE = "\u2013"
#: Time to drain of a queue into a ``wait=True`` processor that has not started reading.
READ_AT_END = "read at end"

#: Queue fill (backlog / backpressure limit) from which an edge is yellow.
EDGE_FILL_YELLOW_FROM = 0.60
#: Queue fill above which an edge is red.
EDGE_FILL_RED_ABOVE = 0.85

#: Edge classes: idle, moving (or below the yellow threshold), yellow, red.
EDGE_IDLE = "heat-0"
EDGE_GREEN = "heat-1"
EDGE_YELLOW = "heat-2"
EDGE_RED = "heat-4"

#: Processor state -> class; unknown states look pending.
STATE_CLASS = {
    "pending": "state-pending",
    "dispatched": "state-pending",
    "running": "state-running",
    "done": "state-done",
    "succeeded": "state-succeeded",
    "failed": "state-failed",
    "cancelled": "state-cancelled",
}
#: Dominant activity of a running processor -> extra classes.
ACTIVITY_CLASS = {
    "busy": "act-busy",
    "backpressured": "state-blocked act-backpressured",
    "idle": "act-idle",
}


@dataclass(frozen=True)
class LegendItem:
    css_class: str
    kind: str  # "edge" or "node"
    label: str


LEGEND: tuple[LegendItem, ...] = (
    LegendItem(EDGE_GREEN, "edge", f"queue < {EDGE_FILL_YELLOW_FROM:.0%} of limit"),
    LegendItem(EDGE_YELLOW, "edge", f"{EDGE_FILL_YELLOW_FROM:.0%} to {EDGE_FILL_RED_ABOVE:.0%}"),
    LegendItem(EDGE_RED, "edge", f"> {EDGE_FILL_RED_ABOVE:.0%}"),
    LegendItem(EDGE_IDLE, "edge", "idle"),
    LegendItem("state-running act-busy", "node", "busy"),
    LegendItem("state-blocked act-backpressured", "node", "backpressured"),
    LegendItem("state-running act-idle", "node", "idle (waiting for input)"),
    LegendItem("state-done", "node", "done"),
    LegendItem("state-failed", "node", "failed"),
)


def edge_heat(edge: EdgeSnapshot) -> str:
    """The class of an edge: by queue fill when it has a limit, else by movement."""
    return fill_heat(edge.fill, moving=edge.backlog > 0 or edge.throughput > 0)


def fill_heat(fill: float | None, *, moving: bool) -> str:
    """The class of a queue ``fill`` (None: no limit); ``moving``: values queued or flowing."""
    if fill is not None and fill > EDGE_FILL_RED_ABOVE:
        return EDGE_RED
    if fill is not None and fill >= EDGE_FILL_YELLOW_FROM:
        return EDGE_YELLOW
    return EDGE_GREEN if moving else EDGE_IDLE


def edge_label(edge: EdgeSnapshot) -> str:
    """The figures drawn under an edge's name: "1.2k/s" and "340 queued" (two lines)."""
    return f"{format_rate(edge.throughput)}\n{format_count(edge.backlog)} queued"


def node_classes(state: ProcessorState) -> str:
    """Classes of a processor node: its state, and its dominant activity while running."""
    classes = [STATE_CLASS.get(state.state, "state-pending")]
    if state.state == "running" and state.activity in ACTIVITY_CLASS:
        classes = [ACTIVITY_CLASS[state.activity]]
        if "state-blocked" not in classes[0]:
            classes.insert(0, "state-running")
    if state.worker_online is False and state.state in ("running", "dispatched"):
        classes.append("worker-offline")
    return " ".join(classes)


def node_status(state: ProcessorState) -> str:
    """One short line under a processor's name: its state or its dominant activity."""
    if state.state == "running":
        if state.worker_online is False:
            return "worker offline"
        if state.activity == "busy":
            return f"busy {state.busy:.0%}"
        if state.activity == "backpressured":
            return f"backpressured {state.backpressured:.0%}"
        if state.activity == "idle":
            return f"idle {state.idle:.0%}"
        return "running"
    return state.state


def format_count(value: float) -> str:
    """1234 -> "1.2k"; small numbers stay exact."""
    value = float(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            scaled = value / limit
            return f"{scaled:.1f}{suffix}" if scaled < 100 else f"{scaled:.0f}{suffix}"
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"


def format_rate(per_second: float) -> str:
    if per_second <= 0:
        return "0/s"
    if per_second < 10:
        return f"{per_second:.1f}/s"
    return f"{format_count(per_second)}/s"


def format_duration(seconds: float | None) -> str:
    """3.25 -> "3.2s", 250 -> "4m 10s", 7600 -> "2h 6m"; None -> :data:`NO_VALUE`."""
    if seconds is None or math.isnan(seconds):
        return NO_VALUE
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m {int(seconds % 60)}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h {int(seconds % 3600 // 60)}m"
    return f"{int(seconds // 86400)}d {int(seconds % 86400 // 3600)}h"


def time_to_drain(backlog: int, read_rate: float | None, write_rate: float) -> tuple[float | None, str]:
    """Seconds until the queue is empty at current rates, and how to say it.

    The queue shrinks at (read rate - write rate); when that is not positive
    it is not draining: "stalled" when nothing is read, "growing" when less is
    read than written; "empty" when nothing is queued.
    """
    if backlog <= 0:
        return 0.0, "empty"
    if read_rate is None:
        return None, NO_VALUE
    net = read_rate - write_rate
    if net <= 0:
        return None, "stalled" if read_rate <= 0 else "growing"
    seconds = backlog / net
    return seconds, format_duration(seconds)


class ReadRates:
    """Values per second consumed on each edge, from successive snapshots of one run.

    Smoothed (exponentially, half weight to the newest window) so that the
    time to drain does not jump with every batch a reader takes.
    """

    #: Windows shorter than this (seconds) are merged into the next one.
    MIN_WINDOW = 0.25

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], tuple[float, int]] = {}
        self._rates: dict[tuple[str, str], float] = {}

    def observe(self, edges: Iterable[EdgeSnapshot], at: float) -> dict[tuple[str, str], float]:
        """Record the edges' read counts at time ``at``; return the rates known so far."""
        for edge in edges:
            key = (edge.io, edge.target)
            previous = self._last.get(key)
            if previous is None:
                self._last[key] = (at, edge.read)
                continue
            elapsed = at - previous[0]
            if elapsed < self.MIN_WINDOW:
                continue
            rate = max(0.0, (edge.read - previous[1]) / elapsed)
            old = self._rates.get(key)
            self._rates[key] = rate if old is None else 0.5 * old + 0.5 * rate
            self._last[key] = (at, edge.read)
        return dict(self._rates)
