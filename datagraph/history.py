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

from .snapshots import INPUT, OUTPUT, EdgeSpec, _Snapshot, edge_specs, loads, text, to_float
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


def parse_entries(reply: Any) -> list[Sample]:
    """Samples from an ``XRANGE`` reply of a history stream (any shape glide gives)."""
    if not reply:
        return []
    items = reply.items() if isinstance(reply, Mapping) else reply
    samples: list[Sample] = []
    for raw_id, raw_fields in items:
        ms = text(raw_id).partition("-")[0]
        if isinstance(raw_fields, Mapping):
            pairs = list(raw_fields.items())
        elif raw_fields and isinstance(raw_fields[0], list | tuple):
            pairs = [(f, v) for f, v in raw_fields]
        else:
            pairs = [(raw_fields[i], raw_fields[i + 1]) for i in range(0, len(raw_fields), 2)]
        fields = {text(f): text(v) for f, v in pairs}
        if "json" in fields:  # a sample too large for the stream's fields
            flat = loads(fields.pop("json")) or []
            fields = {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}
        samples.append((int(ms) / 1000, fields))
    return samples


def merge_samples(coarse: Sequence[Sample], fine: Sequence[Sample]) -> list[Sample]:
    """The coarse samples from before the fine ones begin, then the fine ones."""
    start = fine[0][0] if fine else float("inf")
    return [s for s in coarse if s[0] < start] + list(fine)


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
    first = 0
    if since is not None:
        first = next((i for i, (at, _) in enumerate(samples) if at >= since), len(samples))
    t = [at for at, _ in samples]

    edges = []
    for spec in specs:
        written = [_count(s, f"written:{spec.io}") for _, s in samples]
        read = [_count(s, HISTORY_READ + keys.pos_field(spec.target, spec.io)) for _, s in samples]
        backlog = [max(0, w - r) for w, r in zip(written, read, strict=True)]
        limit = spec.limit
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
            fill=tuple(min(1.0, b / limit) for b in backlog[first:]) if limit else (),
        ))

    processors = []
    for name in names:
        seconds = [_seconds(s, name) for _, s in samples]
        shares = [_shares(seconds[i - 1] if i else (0.0, 0.0, 0.0), seconds[i]) for i in range(len(t))]
        processors.append(ProcessorHistory(
            name=name,
            wait=name in waits,
            t=tuple(t[first:]),
            state=tuple(s.get(f"state:{name}", "pending") for _, s in samples[first:]),
            busy=tuple(share[0] for share in shares[first:]),
            backpressured=tuple(share[2] for share in shares[first:]),
            idle=tuple(share[1] for share in shares[first:]),
        ))

    bottleneck = find_bottleneck(
        t,
        {name: [_seconds(s, name) for _, s in samples] for name in names},
        {name: [s.get(f"state:{name}", "pending") for _, s in samples] for name in names},
        [(e, _full_edge(e, samples)) for e in specs],
        running=state == "running",
    )
    return RunHistory(
        run_id=run_id,
        state=state,
        interval=INTERVAL,
        t=tuple(t[first:]),
        edges=tuple(edges),
        processors=tuple(processors),
        bottleneck=bottleneck,
    )


def _count(sample: Mapping[str, str], field: str) -> int:
    value = to_float(sample.get(field))
    return int(value) if value is not None else 0


def _seconds(sample: Mapping[str, str], name: str) -> tuple[float, float, float]:
    """Cumulative (busy, idle, backpressured) seconds of processor ``name``."""
    return (
        to_float(sample.get(f"busy:{name}")) or 0.0,
        to_float(sample.get(f"idle:{name}")) or 0.0,
        to_float(sample.get(f"bp:{name}")) or 0.0,
    )


def _rates(t: Sequence[float], counts: Sequence[int]) -> list[float]:
    rates = [0.0] * len(t)
    for i in range(1, len(t)):
        elapsed = t[i] - t[i - 1]
        if elapsed > 0:
            rates[i] = max(0.0, (counts[i] - counts[i - 1]) / elapsed)
    return rates


def _shares(
    before: tuple[float, float, float], after: tuple[float, float, float]
) -> tuple[float, float, float]:
    """(busy, idle, backpressured) shares of the time between two cumulative readings."""
    deltas = [max(0.0, a - b) for a, b in zip(after, before, strict=True)]
    total = sum(deltas)
    if total <= 0:
        return (0.0, 0.0, 0.0)
    return (deltas[0] / total, deltas[1] / total, deltas[2] / total)


def _full_edge(spec: EdgeSpec, samples: Sequence[Sample]) -> list[float | None]:
    """The edge's fill at each sample, or None where it has no limit."""
    if not spec.limit:
        return [None] * len(samples)
    fills: list[float | None] = []
    for _, s in samples:
        backlog = _count(s, f"written:{spec.io}") - _count(
            s, HISTORY_READ + keys.pos_field(spec.target, spec.io)
        )
        fills.append(min(1.0, max(0, backlog) / spec.limit))
    return fills


# -- the bottleneck ------------------------------------------------------------------


def find_bottleneck(
    t: Sequence[float],
    seconds: Mapping[str, Sequence[tuple[float, float, float]]],
    states: Mapping[str, Sequence[str]],
    edges: Sequence[tuple[EdgeSpec, Sequence[float | None]]],
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
    """
    named: list[tuple[str, str, float, float] | None] = []  # (processor, input, fill, busy)
    inputs: dict[str, list[tuple[EdgeSpec, Sequence[float | None]]]] = {}
    for spec, fills in edges:
        inputs.setdefault(spec.target, []).append((spec, fills))
    start = 0
    for i, now in enumerate(t):
        while start < i - 1 and t[start + 1] <= now - WINDOW:
            start += 1
        named.append(_candidate(i, max(0, min(start, i - 1)), seconds, states, inputs) if i else None)

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
    j = max(0, next((k for k in range(last, -1, -1) if t[k] <= t[last] - WINDOW), 0))
    shares = {name: _shares(s[j], s[last]) for name, s in seconds.items() if s}
    reason = _reason(processor, io, fill, busy, edges, shares)
    return Bottleneck(
        processor=processor,
        since=t[first],
        until=None if ongoing else t[last],
        reason=reason,
        busy=busy,
        input=io,
        fill=fill,
    )


def _candidate(
    i: int,
    j: int,
    seconds: Mapping[str, Sequence[tuple[float, float, float]]],
    states: Mapping[str, Sequence[str]],
    inputs: Mapping[str, Sequence[tuple[EdgeSpec, Sequence[float | None]]]],
) -> tuple[str, str, float, float] | None:
    best: tuple[str, str, float, float] | None = None
    for name, series in seconds.items():
        if states[name][i] != "running" or name not in inputs:
            continue
        busy, _, backpressured = _shares(series[j], series[i])
        if busy < BUSY_FROM or backpressured >= BACKPRESSURED_FROM:
            continue
        for spec, fills in inputs[name]:
            window = [f for f in fills[j + 1 : i + 1] if f is not None]
            fill = max(window, default=0.0)
            if fill < FULL_FROM:
                continue
            if best is None or (fill, busy) > (best[2], best[3]):
                best = (name, spec.io, fill, busy)
    return best


def _reason(
    processor: str,
    io: str,
    fill: float,
    busy: float,
    edges: Sequence[tuple[EdgeSpec, Sequence[float | None]]],
    shares: Mapping[str, tuple[float, float, float]],
) -> str:
    limit = next((spec.limit for spec, _ in edges if spec.io == io and spec.target == processor), None)
    words = f"busy {_percent(busy)}, its input `{io}` is full ({_percent(fill)} of {limit:,})"
    upstream = {spec.source for spec, _ in edges if spec.target == processor and spec.source != INPUT}
    downstream = {
        spec.target for spec, _ in edges if spec.source == processor and spec.target != OUTPUT
    }
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
