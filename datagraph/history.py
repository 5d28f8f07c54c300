"""Run history: how every edge and processor of a run moved, and its bottleneck.

Workers record it as they go (``store.scripts.sample_history_command``, sent
with the status their writers already publish): about once a second, the
store copies the run's cumulative counters (values written per IO, values
read per reader, busy / idle / backpressured seconds and state per
processor) into a stream whose entry ids are its clock.  The last
:data:`FINE_SECONDS` are kept at one second, the whole run at one minute.
Because the counters are cumulative, rates and shares are differences
between samples, and samples from several workers merge by time into one
series per edge.

This module turns those samples into frozen snapshots (:class:`RunHistory`),
with the bottleneck named by :mod:`datagraph.bottleneck`.  It never touches the store:
:meth:`datagraph.telemetry.Telemetry.history` reads it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from itertools import repeat
from operator import sub, truediv
from typing import Any, TypeVar

from .bottleneck import Bottleneck, find_bottleneck, share_series
from .snapshots import OUTPUT, EdgeSpec, _Snapshot, edge_specs, text
from .store import keys
from .store.scripts import HISTORY_COARSE_SECONDS, HISTORY_FINE_SECONDS, HISTORY_READ

__all__ = [
    "Bottleneck",
    "EdgeHistory",
    "HistoryRecord",
    "ProcessorHistory",
    "RunHistory",
    "build_history",
    "Buckets",
    "Samples",
    "merge_samples",
    "parse_entries",
]

_T = TypeVar("_T")
_N = TypeVar("_N", int, float)

#: Seconds between the samples of the recent history.
INTERVAL = 1.0
#: Seconds of history kept at :data:`INTERVAL`; older samples are a minute apart.
FINE_SECONDS = HISTORY_FINE_SECONDS
COARSE_SECONDS = HISTORY_COARSE_SECONDS


@dataclass(frozen=True)
class EdgeHistory(_Snapshot):
    """One edge over time: an IO from its producer to one reader.

    ``source`` is ``(input)`` for a run input and ``target`` is ``(output)``
    for the caller of ``start_flow``, as in :class:`~datagraph.snapshots.EdgeSnapshot`.
    """

    io: str
    source: str
    target: str
    #: Backlog at which the source waits for this reader (None: no backpressure).
    backpressure_limit: int | None
    #: Sample times (unix seconds, the store's clock).
    t: tuple[float, ...]
    #: Values written to the IO, cumulative.
    written: tuple[int, ...]
    #: Values the target had consumed, cumulative.
    read: tuple[int, ...]
    #: written - read.
    backlog: tuple[int, ...]
    #: Values per second written to the IO since the previous sample.
    throughput: tuple[float, ...]
    #: Values per second the target consumed since the previous sample.
    read_rate: tuple[float, ...]
    #: backlog / backpressure_limit, capped at 1 (empty without a limit).
    fill: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return _shallow(self)


@dataclass(frozen=True)
class ProcessorHistory(_Snapshot):
    """One processor over time: its state and where its time went between samples."""

    name: str
    #: Starts only once its inputs are complete (``wait=True``).
    wait: bool
    t: tuple[float, ...]
    #: "pending", "running", "done", "failed" or "cancelled" at each sample.
    state: tuple[str, ...]
    #: Shares (0..1) of the time since the previous sample; all 0 when it reported none.
    busy: tuple[float, ...]
    backpressured: tuple[float, ...]
    idle: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return _shallow(self)


@dataclass(frozen=True)
class RunHistory(_Snapshot):
    """A run's history: one series per edge and per processor, and its bottleneck."""

    run_id: str
    #: The run's state when the history was read.
    state: str
    #: Seconds between recent samples; samples older than ``FINE_SECONDS`` are a minute apart.
    interval: float
    #: Sample times shared by every series (unix seconds).
    t: tuple[float, ...]
    #: In flow order (run inputs first, then by producer).
    edges: tuple[EdgeHistory, ...]
    processors: tuple[ProcessorHistory, ...]
    #: The most recent bottleneck, or None when the flow kept up throughout.
    bottleneck: Bottleneck | None

    def to_dict(self) -> dict[str, Any]:
        data = _shallow(self)
        data["edges"] = tuple(edge.to_dict() for edge in self.edges)
        data["processors"] = tuple(processor.to_dict() for processor in self.processors)
        data["bottleneck"] = self.bottleneck.to_dict() if self.bottleneck is not None else None
        return data

    def edge(self, io: str, target: str) -> EdgeHistory:
        for edge in self.edges:
            if edge.io == io and edge.target == target:
                return edge
        raise KeyError((io, target))

    def processor(self, name: str) -> ProcessorHistory:
        for processor in self.processors:
            if processor.name == name:
                return processor
        raise KeyError(name)

    def throughput(self) -> tuple[float, ...]:
        """Values per second the run delivered to its caller or, while it delivers
        nothing yet (say, a ``wait=True`` stage at the end), moved on its busiest IO."""
        by_io = {e.io: e.throughput for e in self.edges}
        delivered = {e.io for e in self.edges if e.target == OUTPUT}
        if any(any(by_io[io]) for io in delivered):
            return tuple(sum(values) for values in zip(*(by_io[io] for io in delivered), strict=True))
        if not by_io:
            return ()
        return max(by_io.values(), key=sum)


def _shallow(snapshot: _Snapshot) -> dict[str, Any]:
    """A snapshot's fields as a dict, without copying them: its series are tuples of
    numbers and text, so this equals ``dataclasses.asdict`` without its deep copy of
    each value (seconds for a long history)."""
    return {f.name: getattr(snapshot, f.name) for f in fields(snapshot)}  # type: ignore[arg-type]


# -- building it from samples ------------------------------------------------------

class Samples:
    """A run's history samples, oldest first: times, and a row of values per sample.

    ``names`` lists what the values are (``written:<io>``, ``r:<reader>/<io>``,
    ``busy:<processor>``, ...), as the store keeps it: a list that only grows,
    so an older row may be shorter.  Values are text, "" where missing.
    Reading a column transposes every row at once (in C, not value by value).
    """

    __slots__ = ("_columns", "names", "rows", "t")

    def __init__(self, t: list[float], names: Sequence[str], rows: list[list[str]]) -> None:
        self.t = t
        self.names = list(names)
        self.rows = rows
        self._columns: dict[str, tuple[str, ...]] | None = None

    @classmethod
    def from_mappings(cls, samples: Sequence[tuple[float, Mapping[str, str]]]) -> Samples:
        """Samples given as ``(time, {name: value})`` pairs."""
        names = list(dict.fromkeys(name for _, values in samples for name in values))
        rows = [[values.get(name, "") for name in names] for _, values in samples]
        return cls([at for at, _ in samples], names, rows)

    def __len__(self) -> int:
        return len(self.t)

    def column(self, name: str) -> tuple[str, ...]:
        """The values of ``name`` at every sample ("" where it has none)."""
        if self._columns is None:
            width = len(self.names)
            padded = [row if len(row) == width else (row + [""] * width)[:width] for row in self.rows]
            columns = zip(*padded, strict=True) if padded else iter([()] * width)
            self._columns = dict(zip(self.names, columns, strict=True))
        return self._columns.get(name) or ("",) * len(self.t)


def parse_entries(reply: Any, names: Sequence[str]) -> Samples:
    """Samples from an ``XRANGE`` reply of a history stream (any shape glide gives).

    ``names`` is the run's list of sampled names (``keys.history_names``): an
    entry's field ``v`` holds their values, comma-separated, in that order.
    """
    t: list[float] = []
    rows: list[list[str]] = []
    items = (reply.items() if isinstance(reply, Mapping) else reply) if reply else ()
    for raw_id, raw_fields in items:
        # What the engine writes, as glide gives it: one [b"v", b"..."] pair per entry.
        if (
            isinstance(raw_id, bytes)
            and isinstance(raw_fields, list)
            and len(raw_fields) == 1
            and isinstance(pair := raw_fields[0], list)
            and len(pair) == 2
            and pair[0] == b"v"
            and isinstance(packed := pair[1], bytes)
        ):
            t.append(int(raw_id.partition(b"-")[0]) / 1000)
            rows.append(packed.decode().split(","))
            continue
        if isinstance(raw_fields, Mapping):
            packed = raw_fields.get(b"v", raw_fields.get("v"))
        elif raw_fields and isinstance(raw_fields[0], list | tuple):
            packed = next((v for f, v in raw_fields if text(f) == "v"), None)
        else:
            packed = next(
                (raw_fields[i + 1] for i in range(0, len(raw_fields), 2) if text(raw_fields[i]) == "v"), None
            )
        t.append(int(text(raw_id).partition("-")[0]) / 1000)
        rows.append(text(packed).split(",") if packed is not None else [])
    return Samples(t, names, rows)


def merge_samples(coarse: Samples, fine: Samples) -> Samples:
    """The coarse samples from before the fine ones begin, then the fine ones.

    Of samples taken in the same millisecond (processors ending together), the last.
    The names are the longer list (they only grow).
    """
    start = fine.t[0] if fine.t else float("inf")
    t: list[float] = []
    rows: list[list[str]] = []
    for at, row in [*((a, r) for a, r in zip(coarse.t, coarse.rows, strict=True) if a < start),
                    *zip(fine.t, fine.rows, strict=True)]:
        if t and t[-1] == at:
            rows[-1] = row
        else:
            t.append(at)
            rows.append(row)
    names = fine.names if len(fine.names) >= len(coarse.names) else coarse.names
    return Samples(t, names, rows)


@dataclass(frozen=True)
class HistoryRecord:
    """What the store holds of a run's history: its state, plan and samples."""

    state: str
    plan: Mapping[str, Any]
    samples: Samples


def build_history(
    run_id: str,
    plan: Mapping[str, Any],
    state: str,
    samples: Samples,
    *,
    since: float | None = None,
) -> RunHistory:
    """A :class:`RunHistory` from a run's plan and its samples (oldest first).

    Rates and shares at a sample are taken since the previous one, so pass a
    sample from before ``since`` too: only samples at or after ``since`` are returned.

    Every series is built with whole-list operations (``map`` over columns,
    one list of time steps shared by every rate), as a page builds 60 of them
    from about a thousand samples each.
    """
    specs = edge_specs(plan)
    specs_of = [p for p in (plan.get("flow") or {}).get("processors", []) if isinstance(p, Mapping)]
    names = [str(p.get("name")) for p in specs_of]
    waits = {str(p.get("name")) for p in specs_of if p.get("wait")}
    t = samples.t
    first = 0
    if since is not None:
        first = next((i for i, at in enumerate(t) if at >= since), len(t))
    column = _Columns(samples)
    steps = _steps(t)
    shown_t = _tail(t, first)

    edges = []
    fills: list[tuple[EdgeSpec, list[float] | None]] = []
    for spec in specs:
        written = column.counts(f"written:{spec.io}")
        read = column.counts(HISTORY_READ + keys.pos_field(spec.target, spec.io))
        backlog = _clamped(list(map(sub, written, read)), 0)
        limit = spec.limit
        fill = None
        if limit:
            fill = list(map(truediv, backlog, repeat(limit)))
            if backlog and max(backlog) >= limit:
                fill = [f if f < 1.0 else 1.0 for f in fill]
        fills.append((spec, fill))
        edges.append(EdgeHistory(
            io=spec.io,
            source=spec.source,
            target=spec.target,
            backpressure_limit=limit,
            t=shown_t,
            written=_tail(written, first),
            read=_tail(read, first),
            backlog=_tail(backlog, first),
            throughput=_tail(_rates(steps, written), first),
            read_rate=_tail(_rates(steps, read), first),
            fill=_tail(fill, first) if fill is not None else (),
        ))

    processors = []
    seconds: dict[str, tuple[list[float], list[float], list[float]]] = {}
    states: dict[str, list[str]] = {}
    for name in names:
        cumulative = (
            column.seconds(f"busy:{name}"), column.seconds(f"idle:{name}"), column.seconds(f"bp:{name}")
        )
        seconds[name] = cumulative
        states[name] = column.states(f"state:{name}")
        busy, idle, held = share_series(cumulative, range(-1, len(t) - 1))
        processors.append(ProcessorHistory(
            name=name,
            wait=name in waits,
            t=shown_t,
            state=_tail(states[name], first),
            busy=_tail(busy, first),
            backpressured=_tail(held, first),
            idle=_tail(idle, first),
        ))

    return RunHistory(
        run_id=run_id,
        state=state,
        interval=INTERVAL,
        t=shown_t,
        edges=tuple(edges),
        processors=tuple(processors),
        bottleneck=find_bottleneck(t, seconds, states, fills, running=state == "running"),
    )


def _tail(values: Sequence[_T], first: int) -> tuple[_T, ...]:
    """``values`` from index ``first`` on, as a tuple (one copy)."""
    return tuple(values) if not first else tuple(values[first:])


class _Columns:
    """The samples' values by name, converted once each."""

    def __init__(self, samples: Samples) -> None:
        self._samples = samples

    def counts(self, name: str) -> list[int]:
        return _convert(self._samples.column(name), int, lambda v: int(_number(v)))

    def seconds(self, name: str) -> list[float]:
        return _convert(self._samples.column(name), float, _number)

    def states(self, name: str) -> list[str]:
        column = self._samples.column(name)
        if "" not in column:
            return list(column)
        return [v or "pending" for v in column]


def _convert(column: Sequence[str], kind: Callable[[str], _N], lenient: Callable[[str], _N]) -> list[_N]:
    """``column`` as numbers: all at once when every value reads, else with the blanks
    before a name's first sample as 0, and ``lenient`` for anything the engine does not write."""
    try:
        return list(map(kind, column))
    except ValueError:
        pass
    blanks = 0
    while blanks < len(column) and not column[blanks]:
        blanks += 1
    try:
        return [kind("0")] * blanks + list(map(kind, column[blanks:]))
    except ValueError:
        return [lenient(v) for v in column]


def _number(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return float(value)
    except ValueError:
        return 0.0


def _clamped(values: list[_N], floor: _N) -> list[_N]:
    """``values`` with anything below ``floor`` raised to it (checked at C speed first)."""
    if values and min(values) < floor:
        return [v if v > floor else floor for v in values]
    return values


def _steps(t: Sequence[float]) -> list[float]:
    """Seconds between each sample and the one before, shared by every rate of one
    history; infinite where time did not move on, so that a rate over it is 0."""
    steps = list(map(sub, t[1:], t[:-1]))
    if steps and min(steps) <= 0:
        steps = [dt if dt > 0 else math.inf for dt in steps]
    return steps


def _rates(steps: Sequence[float], counts: Sequence[int]) -> list[float]:
    """Per second between each sample and the one before (0 for the first, and where
    the count went down); ``steps`` from :func:`_steps` of the samples' times."""
    if not counts:
        return []
    rates = [0.0]
    rates += map(truediv, _clamped(list(map(sub, counts[1:], counts[:-1])), 0), steps)
    return rates


# -- time buckets, for heatmaps ---------------------------------------------------------


class Buckets:
    """Equal time buckets over a history's samples, for heatmaps.

    ``spans`` are the buckets' ``(start, end)`` times; each series sampled at
    the same times is reduced per bucket with one slice per bucket.
    """

    def __init__(self, t: Sequence[float], count: int) -> None:
        self.spans: list[tuple[float, float]] = []
        #: Per bucket, the samples in it as a slice ``[lo, hi)`` of the series.
        self._ranges: list[tuple[int, int]] = []
        self._slices: list[slice] = []
        self._sizes: list[int] = []
        #: Every bucket holds at least one sample.
        self._full = False
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
        self._slices = [slice(lo, hi) for lo, hi in self._ranges]
        self._sizes = [hi - lo for lo, hi in self._ranges]
        self._full = all(hi > lo for lo, hi in self._ranges)

    def __len__(self) -> int:
        return len(self.spans)

    def resample(self, values: Sequence[float], *, mean: bool = False) -> list[float | None]:
        """The largest (or the mean) value sampled in each bucket.

        A bucket with no sample repeats the last value; None before the first
        sample.  Largest by default, so that a queue that filled for one
        second shows in a bucket of a minute; the mean suits shares of time.
        """
        if self._full:  # every bucket has a sample: one slice each, no bookkeeping
            chunks = map(values.__getitem__, self._slices)
            if not mean:
                return list(map(max, chunks))
            return list(map(truediv, map(sum, chunks), self._sizes))
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
