"""The bottleneck of a run, named from its history with Flink's rule.

At each history sample, judged over the last :data:`WINDOW` seconds: a
running processor that was busy at least :data:`BUSY_FROM` of the time and
backpressured less than :data:`BACKPRESSURED_FROM`, while one of its bounded
inputs was at least :data:`FULL_FROM` full (the live overlay's red).  The
history module (:mod:`datagraph.history`) builds the series this reads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import add, sub, truediv

from .snapshots import INPUT, OUTPUT, EdgeSpec, _Snapshot

__all__ = [
    "BACKPRESSURED_FROM",
    "BUSY_FROM",
    "FULL_FROM",
    "GAP",
    "IDLE_FROM",
    "WINDOW",
    "Bottleneck",
    "Cumulative",
    "find_bottleneck",
    "share_series",
]

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


def share_series(
    cumulative: Cumulative, before: Sequence[int]
) -> tuple[list[float], list[float], list[float]]:
    """Shares (busy, idle, backpressured) at every sample ``i``, since sample ``before[i]``
    (since the run's start where that is -1): at once for a whole series."""
    deltas = []
    consecutive = isinstance(before, range) and before.start == -1 and before.step == 1
    for series in cumulative:
        if consecutive:  # since the sample before: differences of neighbours, no index lookups
            step = list(series[:1])
            step += map(sub, series[1:], series[:-1])
        else:
            step = list(map(sub, series, [series[j] if j >= 0 else 0.0 for j in before]))
        if step and min(step) < 0:
            step = [d if d > 0 else 0.0 for d in step]
        deltas.append(step)
    busy, idle, held = deltas
    if len(busy) != len(idle) or len(busy) != len(held):
        raise ValueError("busy, idle and backpressured seconds must have a value at every sample")
    # Where no time was reported, every share is 0 (0 / inf).
    totals = list(map(add, map(add, busy, idle), held))
    if totals and min(totals) <= 0:
        totals = [total if total > 0 else math.inf for total in totals]
    return (
        list(map(truediv, busy, totals)),
        list(map(truediv, idle, totals)),
        list(map(truediv, held, totals)),
    )



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
        # An input never FULL_FROM full names no one: only the others are judged sample by sample.
        if fills and max(fills) >= FULL_FROM:
            inputs.setdefault(spec.target, []).append((spec, fills))
    named: list[tuple[str, str, float, float] | None] = [None] * len(t)  # processor, input, fill, busy
    for name, bounded in inputs.items():
        cumulative, state = seconds.get(name), states.get(name)
        if cumulative is None or state is None:
            continue
        window_busy, _, window_held = share_series(cumulative, starts)
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
