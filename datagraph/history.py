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

This module turns those samples into frozen snapshots (:class:`RunHistory`)
and names the bottleneck with Flink's rule: the processor that is busy while
an input of its is full and it is not itself backpressured
(:func:`find_bottleneck`).  It never touches the store:
:meth:`datagraph.telemetry.Telemetry.history` reads it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .snapshots import INPUT, OUTPUT, EdgeSpec, _Snapshot, edge_specs, text
from .store import keys
from .store.scripts import HISTORY_COARSE_SECONDS, HISTORY_FINE_SECONDS, HISTORY_READ

__all__ = [
    "BUSY_FROM",
    "FULL_FROM",
    "Bottleneck",
    "EdgeHistory",
    "HistoryRecord",
    "ProcessorHistory",
    "RunHistory",
    "build_history",
    "buckets",
    "find_bottleneck",
    "merge_samples",
    "parse_entries",
    "resample",
]

#: Seconds between the samples of the recent history.
INTERVAL = 1.0
#: Seconds of history kept at :data:`INTERVAL`; older samples are a minute apart.
FINE_SECONDS = HISTORY_FINE_SECONDS
COARSE_SECONDS = HISTORY_COARSE_SECONDS

#: Queue fill (backlog / backpressure limit) from which an input counts as full
#: (the live overlay's red).
FULL_FROM = 0.85
#: Share of time busy from which a processor with a full input is the bottleneck.
BUSY_FROM = 0.5
#: Share of time backpressured from which a processor is held back by its readers
#: (and so is not the bottleneck itself).
BACKPRESSURED_FROM = 0.3
#: Share of time idle from which the processors downstream count as idle.
IDLE_FROM = 0.5
#: Seconds over which shares and fills are judged (one-second samples are noisy).
WINDOW = 5.0
#: Samples without a bottleneck that do not interrupt one (noise, a slow flush).
GAP = 2


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


@dataclass(frozen=True)
class Bottleneck(_Snapshot):
    """The processor holding the run back, and since when."""

    processor: str
    #: First sample at which it was the bottleneck (unix seconds).
    since: float
    #: Last sample at which it was; None while it still is.
    until: float | None
    #: In words: "busy 97 %, its input `events` is full (98 % of 10,000); upstream is
    #: backpressured (extract); downstream idle".
    reason: str
    #: Its busy share and its fullest input, at the last sample it was the bottleneck.
    busy: float
    input: str
    fill: float

    def describe(self) -> str:
        """One sentence for people on call (times in this machine's local time)."""
        since = time.strftime("%H:%M:%S", time.localtime(self.since))
        if self.until is None:
            return f"{self.processor} is the bottleneck since {since} \u2014 {self.reason}"
        until = time.strftime("%H:%M:%S", time.localtime(self.until))
        return f"{self.processor} was the bottleneck from {since} to {until} \u2014 {self.reason}"


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


# -- building it from samples ------------------------------------------------------

#: One sample: its time (unix seconds) and the counters it copied.
Sample = tuple[float, Mapping[str, str]]


@dataclass(frozen=True)
class HistoryRecord:
    """What the store holds of a run's history: its state, plan and samples (oldest first)."""

    state: str
    plan: Mapping[str, Any]
    samples: list[Sample]


def parse_entries(reply: Any, names: Sequence[str]) -> list[Sample]:
    """Samples from an ``XRANGE`` reply of a history stream (any shape glide gives).

    ``names`` is the run's list of sampled names (``keys.history_names``): an
    entry's field ``v`` holds their values, comma-separated, in that order.
    """
    if not reply:
        return []
    items = reply.items() if isinstance(reply, Mapping) else reply
    samples: list[Sample] = []
    for raw_id, raw_fields in items:
        ms = text(raw_id).partition("-")[0]
        if isinstance(raw_fields, Mapping):
            packed = raw_fields.get(b"v", raw_fields.get("v"))
        elif raw_fields and isinstance(raw_fields[0], list | tuple):
            packed = next((v for f, v in raw_fields if text(f) == "v"), None)
        else:
            packed = next(
                (raw_fields[i + 1] for i in range(0, len(raw_fields), 2) if text(raw_fields[i]) == "v"), None
            )
        values = text(packed).split(",") if packed is not None else []
        fields = {name: value for name, value in zip(names, values, strict=False) if value}
        samples.append((int(ms) / 1000, fields))
    return samples


def merge_samples(coarse: Sequence[Sample], fine: Sequence[Sample]) -> list[Sample]:
    """The coarse samples from before the fine ones begin, then the fine ones.

    Of samples taken in the same millisecond (processors ending together), the last.
    """
    start = fine[0][0] if fine else float("inf")
    merged: list[Sample] = []
    for sample in [*(s for s in coarse if s[0] < start), *fine]:
        if merged and merged[-1][0] == sample[0]:
            merged[-1] = sample
        else:
            merged.append(sample)
    return merged


def build_history(
    run_id: str,
    plan: Mapping[str, Any],
    state: str,
    samples: Sequence[Sample],
    *,
    since: float | None = None,
) -> RunHistory:
    """A :class:`RunHistory` from a run's plan and its samples (oldest first).

    Rates and shares at a sample are taken since the previous one, so pass a
    sample from before ``since`` too: only samples at or after ``since`` are returned.
    """
    specs = edge_specs(plan)
    specs_of = [p for p in (plan.get("flow") or {}).get("processors", []) if isinstance(p, Mapping)]
    names = [str(p.get("name")) for p in specs_of]
    waits = {str(p.get("name")) for p in specs_of if p.get("wait")}
    t = [at for at, _ in samples]
    first = 0
    if since is not None:
        first = next((i for i, at in enumerate(t) if at >= since), len(t))
    column = _Columns(samples)

    edges = []
    fills: list[tuple[EdgeSpec, list[float] | None]] = []
    for spec in specs:
        written = column.counts(f"written:{spec.io}")
        read = column.counts(HISTORY_READ + keys.pos_field(spec.target, spec.io))
        backlog = [w - r if w > r else 0 for w, r in zip(written, read, strict=True)]
        limit = spec.limit
        fill = [b / limit if b < limit else 1.0 for b in backlog] if limit else None
        fills.append((spec, fill))
        edges.append(EdgeHistory(
            io=spec.io,
            source=spec.source,
            target=spec.target,
            backpressure_limit=limit,
            t=tuple(t[first:]),
            written=tuple(written[first:]),
            read=tuple(read[first:]),
            backlog=tuple(backlog[first:]),
            throughput=tuple(_rates(t, written)[first:]),
            read_rate=tuple(_rates(t, read)[first:]),
            fill=tuple(fill[first:]) if fill is not None else (),
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
        busy, idle, held = _share_series(cumulative, range(-1, len(t) - 1))
        processors.append(ProcessorHistory(
            name=name,
            wait=name in waits,
            t=tuple(t[first:]),
            state=tuple(states[name][first:]),
            busy=tuple(busy[first:]),
            backpressured=tuple(held[first:]),
            idle=tuple(idle[first:]),
        ))

    return RunHistory(
        run_id=run_id,
        state=state,
        interval=INTERVAL,
        t=tuple(t[first:]),
        edges=tuple(edges),
        processors=tuple(processors),
        bottleneck=find_bottleneck(t, seconds, states, fills, running=state == "running"),
    )


class _Columns:
    """The samples' values by name, converted once each."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self._samples = samples

    def _raw(self, name: str) -> list[str | None]:
        return [s.get(name) for _, s in self._samples]

    def counts(self, name: str) -> list[int]:
        return [int(_number(v)) for v in self._raw(name)]

    def seconds(self, name: str) -> list[float]:
        return [_number(v) for v in self._raw(name)]

    def states(self, name: str) -> list[str]:
        return [v or "pending" for v in self._raw(name)]


def _number(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return float(value)
    except ValueError:
        return 0.0


def _rates(t: Sequence[float], counts: Sequence[int]) -> list[float]:
    rates = [0.0] * len(t)
    for i in range(1, len(t)):
        elapsed = t[i] - t[i - 1]
        if elapsed > 0:
            rates[i] = max(0.0, (counts[i] - counts[i - 1]) / elapsed)
    return rates


#: Cumulative (busy, idle, backpressured) seconds of one processor, a value per sample.
Cumulative = tuple[Sequence[float], Sequence[float], Sequence[float]]


def _shares(cumulative: Cumulative, before: int, after: int) -> tuple[float, float, float]:
    """(busy, idle, backpressured) shares of the time between samples ``before`` and ``after``.

    From the start of the run when ``before`` is -1.
    """
    busy, idle, bp = cumulative
    if before < 0:
        deltas = (busy[after], idle[after], bp[after])
    else:
        deltas = (busy[after] - busy[before], idle[after] - idle[before], bp[after] - bp[before])
    b, i, p = (d if d > 0 else 0.0 for d in deltas)
    total = b + i + p
    if total <= 0:
        return (0.0, 0.0, 0.0)
    return (b / total, i / total, p / total)


def _share_series(
    cumulative: Cumulative, before: Sequence[int]
) -> tuple[list[float], list[float], list[float]]:
    """Shares (busy, idle, backpressured) at every sample ``i``, since sample ``before[i]``.

    :func:`_shares` for a whole series at once (the hot loop of a long history).
    """
    busy, idle, bp = cumulative
    out: tuple[list[float], list[float], list[float]] = ([], [], [])
    for i, j in enumerate(before):
        if j < 0:
            db, di, dp = busy[i], idle[i], bp[i]
        else:
            db, di, dp = busy[i] - busy[j], idle[i] - idle[j], bp[i] - bp[j]
        db, di, dp = (db if db > 0 else 0.0), (di if di > 0 else 0.0), (dp if dp > 0 else 0.0)
        total = db + di + dp
        if total > 0:
            out[0].append(db / total)
            out[1].append(di / total)
            out[2].append(dp / total)
        else:
            out[0].append(0.0)
            out[1].append(0.0)
            out[2].append(0.0)
    return out


# -- the bottleneck ------------------------------------------------------------------


def find_bottleneck(
    t: Sequence[float],
    seconds: Mapping[str, Cumulative],
    states: Mapping[str, Sequence[str]],
    edges: Sequence[tuple[EdgeSpec, Sequence[float] | None]],
    *,
    running: bool,
) -> Bottleneck | None:
    """The run's most recent bottleneck, by Flink's rule, or None if it kept up.

    At each sample, judged over the last :data:`WINDOW` seconds: a running
    processor that was busy at least :data:`BUSY_FROM` of the time and
    backpressured less than :data:`BACKPRESSURED_FROM`, while one of its
    bounded inputs was at least :data:`FULL_FROM` full.  An edge into a
    ``wait=True`` processor has no limit (its writer never waits for it), so a
    waiting processor is never the bottleneck and its input never "full".
    Of several candidates, the one with the fullest input, then the busiest.
    A bottleneck lasts while it is named, across gaps of up to :data:`GAP` samples.
    ``seconds`` holds cumulative (busy, idle, backpressured) seconds per
    processor, ``edges`` each edge's fill per sample (None without a limit).
    """
    starts = _window_starts(t)
    inputs: dict[str, list[tuple[EdgeSpec, Sequence[float]]]] = {}
    for spec, fills in edges:
        if fills is not None:
            inputs.setdefault(spec.target, []).append((spec, fills))
    named: list[tuple[str, str, float, float] | None] = [None] * len(t)  # processor, input, fill, busy
    for name, bounded in inputs.items():
        cumulative, state = seconds.get(name), states.get(name)
        if cumulative is None or state is None:
            continue
        window_busy, _, window_held = _share_series(cumulative, starts)
        for i in range(1, len(t)):
            busy, backpressured = window_busy[i], window_held[i]
            if busy < BUSY_FROM or backpressured >= BACKPRESSURED_FROM or state[i] != "running":
                continue
            for spec, fills in bounded:
                fill = max(fills[starts[i] + 1 : i + 1])
                best = named[i]
                if fill >= FULL_FROM and (best is None or (fill, busy) > (best[2], best[3])):
                    named[i] = (name, spec.io, fill, busy)

    last = next((i for i in range(len(named) - 1, -1, -1) if named[i] is not None), None)
    if last is None:
        return None
    winner = named[last]
    assert winner is not None
    processor, io, fill, busy = winner
    first, gap = last, 0
    for i in range(last - 1, -1, -1):
        current = named[i]
        if current is not None and current[0] == processor:
            first, gap = i, 0
        elif (gap := gap + 1) > GAP:
            break
    ongoing = running and len(t) - 1 - last <= GAP
    shares = {name: _shares(c, starts[last], last) for name, c in seconds.items()}
    return Bottleneck(
        processor=processor,
        since=t[first],
        until=None if ongoing else t[last],
        reason=_reason(processor, io, fill, busy, [spec for spec, _ in edges], shares),
        busy=busy,
        input=io,
        fill=fill,
    )


def _window_starts(t: Sequence[float]) -> list[int]:
    """For each sample, the latest earlier sample at least :data:`WINDOW` seconds before it
    (the first sample when there is none; -1 for the first itself)."""
    starts = [-1] * len(t)
    j = 0
    for i in range(1, len(t)):
        while j < i - 1 and t[j + 1] <= t[i] - WINDOW:
            j += 1
        starts[i] = j
    return starts


def _reason(
    processor: str,
    io: str,
    fill: float,
    busy: float,
    edges: Sequence[EdgeSpec],
    shares: Mapping[str, tuple[float, float, float]],
) -> str:
    limit = next((spec.limit for spec in edges if spec.io == io and spec.target == processor), None)
    words = f"busy {_percent(busy)}, its input `{io}` is full ({_percent(fill)} of {limit:,})"
    upstream = {spec.source for spec in edges if spec.target == processor and spec.source != INPUT}
    downstream = {spec.target for spec in edges if spec.source == processor and spec.target != OUTPUT}
    held = sorted(p for p in upstream if shares.get(p, (0, 0, 0))[2] >= BACKPRESSURED_FROM)
    if held:
        words += f"; upstream is backpressured ({', '.join(held)})"
    if downstream and all(shares.get(p, (0, 0, 0))[1] >= IDLE_FROM for p in downstream):
        words += "; downstream idle"
    return words


def _percent(share: float) -> str:
    return f"{share * 100:.0f} %"


# -- time buckets, for heatmaps ---------------------------------------------------------


def buckets(t: Sequence[float], count: int, end: float | None = None) -> list[tuple[float, float]]:
    """``count`` equal time buckets ``(start, end)`` spanning the samples ``t`` (up to ``end``)."""
    if not t or count <= 0:
        return []
    first, last = t[0], max(t[-1], end if end is not None else t[-1])
    width = max(last - first, 1e-9) / count
    return [(first + i * width, first + (i + 1) * width) for i in range(count)]


def resample(
    t: Sequence[float],
    values: Sequence[float],
    spans: Sequence[tuple[float, float]],
    *,
    mean: bool = False,
) -> list[float | None]:
    """The largest (or the mean) value sampled in each span.

    A span with no sample repeats the last value; None before the first sample.
    Largest by default, so that a queue that filled for one second shows in a
    bucket of a minute; the mean suits shares of time.
    """
    out: list[float | None] = []
    i = 0
    last: float | None = None
    for index, (_, stop) in enumerate(spans):
        taken: list[float] = []
        final = index == len(spans) - 1
        while i < len(t) and (t[i] < stop or final):
            taken.append(values[i])
            i += 1
        if taken:
            last = sum(taken) / len(taken) if mean else max(taken)
        out.append(last)
    return out
