"""scale with work: the pipeline at growing N; does its cost grow linearly?

Each step is 10x the previous one, so linear cost means a time ratio of
about 10x (less at small N, where the fixed cost of starting a run still
shows).  A per-value cost that *grows* with N (ratio well above 10x) would
mean something accumulates: an unbounded buffer, a stream that is never
trimmed, a scan over everything written so far.
"""

from __future__ import annotations

from typing import Any

from ._flows import PIPELINE
from ._harness import FIGURES_NOTE, Bench, Session, fmt_rate, median
from .pipeline import flow_rate, warm_up

NAME = "scale"
BACKEND = "asyncio"
#: A per-value cost this much above the previous step's counts as superlinear.
TOLERANCE = 1.25


def run(bench: Bench) -> dict[str, Any]:
    sizes = bench.pick([10_000, 100_000], [10_000, 100_000, 1_000_000])
    rounds = bench.pick(3, 3)
    bench.title(
        NAME,
        f"the pipeline at N = {', '.join(f'{n:,}' for n in sizes)}; LocalExecutor, {BACKEND}, "
        f"best of {rounds} rounds",
    )
    bench.say(f"  {FIGURES_NOTE}")

    async def one_round(session: Session) -> dict[int, float]:
        await warm_up(session)
        return {n: n / await flow_rate(session, PIPELINE, n) for n in sizes}

    # Each round runs every size back to back; a step's time ratio is the median
    # of its per-round ratios, so a load change between rounds cancels out.
    times = [bench.session(BACKEND, one_round) for _ in range(rounds)]
    steps: list[dict[str, Any]] = []
    linear = True
    previous = None
    for n in sizes:
        seconds = min(t[n] for t in times)
        step: dict[str, Any] = {
            "n": n,
            "values_per_s": n / seconds,
            "seconds": seconds,
            "us_per_value": seconds / n * 1e6,
        }
        if previous is None:
            ratio = "baseline"
        else:
            step["time_ratio"] = median(t[n] / t[previous] for t in times)
            step["n_ratio"] = n / previous
            # Superlinear: the per-value cost grows by more than TOLERANCE from one step to the next.
            linear = linear and step["time_ratio"] <= step["n_ratio"] * TOLERANCE
            ratio = f"{step['time_ratio']:.1f}x the time for {step['n_ratio']:.0f}x the values"
        bench.row(f"N={n:,}", fmt_rate(n / seconds), ratio, f"{step['us_per_value']:.2f} us/value")
        steps.append(step)
        previous = n
    verdict = (
        "yes (the per-value cost does not grow with N)"
        if linear
        else "NO (the per-value cost grows with N: superlinear)"
    )
    bench.say(f"  linear: {verdict}")
    bench.record(NAME, backend=BACKEND, steps=steps, linear=linear)
    return {"steps": steps, "linear": linear}
