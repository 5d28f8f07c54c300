"""Each run's history as last read, built and drawn, shared by everything that shows it.

A run's page, its live feed (``/events/runs/{id}``) and ``GET
/api/runs/{id}/history`` all show the same history. Building the series of a
30-edge run from 15 minutes of samples and drawing its heatmaps costs tens of
milliseconds, while a finished run's history never changes and a running
run's gains one sample a second. So the dashboard keeps, per run, the samples
it has read (each later read asks the store only for newer ones), the
:class:`~datagraph.history.RunHistory` built from them, and, made when first
asked for, its heatmaps, sparklines and JSON. A read that finds nothing new
(same samples, same run state) reuses all of them.

A history is read again at most every :data:`REDRAW_SECONDS`, or once its
newest heatmap column has moved on when a column covers longer: an hour-long
run's column covers half a minute, and redrawing it each second would change
nothing a viewer sees. Every read is one round trip.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
from markupsafe import Markup

from datagraph.history import RunHistory, Samples, build_history, merge_samples
from datagraph.snapshots import OUTPUT
from datagraph.telemetry import Telemetry

from .heatmap import Heatmap, heatmap, sparkline

__all__ = ["REDRAW_SECONDS", "TREND_SAMPLES", "DrawnHistory", "HistoryTracker", "RunHistories"]

#: Seconds between two readings (and drawings) of a live run's history, at least.
REDRAW_SECONDS = 2.0
#: Samples shown as a sparkline in the edges table.
TREND_SAMPLES = 60


class HistoryTracker:
    """A run's history samples, kept between reads: each read asks only for the new ones.

    The whole history is read again once a minute, so that what the store
    thinned out to one sample a minute is thinned out here too.
    """

    REREAD_SECONDS = 60.0

    def __init__(self, telemetry: Telemetry, run_id: str) -> None:
        self.telemetry = telemetry
        self.run_id = run_id
        self.samples = Samples([], [], [])
        self.plan: Mapping[str, Any] = {}
        self.state = ""
        self._read_all_at = -float("inf")
        #: What the last read found: (samples, their newest time, names, run state); None before.
        self.version: tuple[int, float, int, str] | None = None

    async def read(self) -> RunHistory | None:
        """The history with any new samples; None when the run is unknown."""
        if await self.refresh() is None:
            return None
        return self.build()

    async def refresh(self) -> bool | None:
        """Read what is new: True when anything changed, False when nothing did,
        None when the run is unknown (or has expired)."""
        now = time.monotonic()
        whole = not self.samples.t or now - self._read_all_at >= self.REREAD_SECONDS
        after = None if whole else self.samples.t[-1]
        (record,) = await self.telemetry.history_records([self.run_id], after=after)
        if record is None:
            self.version = None
            return None
        if whole:
            self.samples, self._read_all_at = record.samples, now
        elif record.samples.t or len(record.samples.names) != len(self.samples.names):
            self.samples = merge_samples(self.samples, record.samples)
        self.plan, self.state = record.plan, record.state
        samples = self.samples
        version = (len(samples), samples.t[-1] if samples.t else 0.0, len(samples.names), record.state)
        changed = version != self.version
        self.version = version
        return changed

    def build(self) -> RunHistory:
        return build_history(self.run_id, self.plan, self.state, self.samples)


@dataclass(eq=False)
class DrawnHistory:
    """One run's history and, made once each when first asked for, what shows it."""

    history: RunHistory
    _drawing: Heatmap | None = None
    _drawn: bool = False
    _json: bytes | None = None
    _trends: dict[tuple[str, str], tuple[Markup, Markup]] = field(default_factory=dict)

    @property
    def drawing(self) -> Heatmap | None:
        """The heatmaps (None while the history has no sample)."""
        if not self._drawn:
            self._drawing = heatmap(self.history) if self.history.t else None
            self._drawn = True
        return self._drawing

    def json(self) -> bytes:
        """``history.to_dict()`` as JSON (what ``GET /api/runs/{id}/history`` answers)."""
        if self._json is None:
            self._json = json.dumps(self.history.to_dict(), separators=(",", ":")).encode()
        return self._json

    def trends(self, io: str, target: str) -> tuple[Markup, Markup] | None:
        """Sparklines of one edge's recent throughput and backlog; None for an edge it lacks."""
        key = (io, target)
        found = self._trends.get(key)
        if found is None:
            try:
                edge = self.history.edge(io, target)
            except KeyError:
                return None
            name = f"{io} to {'caller' if target == OUTPUT else target}"
            rate, queue = edge.throughput[-TREND_SAMPLES:], edge.backlog[-TREND_SAMPLES:]
            found = self._trends[key] = (
                sparkline(rate, css="spark-rate", label=f"throughput of {name}, recent"),
                sparkline(queue, css="spark-queue", label=f"queue of {name}, recent"),
            )
        return found


@dataclass(eq=False)
class _Entry:
    tracker: HistoryTracker
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    drawn: DrawnHistory | None = None
    #: When the store was last read for it (monotonic), and when it was last asked for.
    read_at: float = -float("inf")
    used_at: float = 0.0


class RunHistories:
    """The histories of the runs viewed lately (at most ``capacity``, the least recent dropped;
    one not asked for in ``idle_seconds`` is dropped too)."""

    def __init__(
        self,
        capacity: int = 4,
        *,
        idle_seconds: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        #: Reads of the store, and builds of a history, since this was made (for tests and benchmarks).
        self.reads = 0
        self.builds = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get(
        self, telemetry: Telemetry, run_id: str, *, fresh: bool = False, max_age: float | None = None
    ) -> DrawnHistory | None:
        """The run's history, read again if due (or if ``fresh``); None when the run is unknown.

        Due once its newest heatmap column has moved on (:data:`REDRAW_SECONDS` at least),
        or after ``max_age`` seconds when that is given (callers without a heatmap).
        """
        now = self._clock()
        self._drop_idle(now)
        entry = self._entries.get(run_id)
        if entry is None:
            entry = self._entries[run_id] = _Entry(HistoryTracker(telemetry, run_id))
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        self._entries.move_to_end(run_id)
        entry.used_at = now
        async with entry.lock:  # one read and build per run at a time; the others take its result
            drawn = entry.drawn
            if drawn is not None and not fresh:
                wait = _wait(drawn) if max_age is None else max_age
                if now - entry.read_at < wait:
                    return drawn
            entry.tracker.telemetry = telemetry
            self.reads += 1
            changed = await entry.tracker.refresh()
            entry.read_at = self._clock()
            if changed is None:
                self._entries.pop(run_id, None)
                return None
            if changed or entry.drawn is None:
                self.builds += 1
                entry.drawn = DrawnHistory(entry.tracker.build())
            return entry.drawn

    def _drop_idle(self, now: float) -> None:
        stale = [key for key, entry in self._entries.items() if now - entry.used_at > self.idle_seconds]
        for key in stale:
            del self._entries[key]


def _wait(drawn: DrawnHistory) -> float:
    """Seconds a history is shown before it is read again."""
    drawing = drawn._drawing
    return max(REDRAW_SECONDS, drawing.column_seconds if drawing is not None else 0.0)
