"""fan-in / fan-out: two sources zipped by one processor; one source read by three sinks.

Baselines, measured in the same session and interleaved with the runs:
fan-in against the straight 2-stage pipeline with the same N; fan-out
against the same flow with a single sink.
"""

from __future__ import annotations

from typing import Any

from datagraph import IOVal

from ._flows import FANIN, FANOUT, FANOUT_ONE, PIPELINE
from ._harness import FIGURES_NOTE, Bench, Session, fmt_rate, median
from .pipeline import flow_rate, warm_up

NAME = "fan"
BACKEND = "asyncio"


def run(bench: Bench) -> dict[str, Any]:
    n = bench.pick(100_000, 300_000)
    repeats = bench.pick(3, 5)
    bench.title(NAME, f"LocalExecutor, {BACKEND}, N={n:,} per source, best of {repeats}")
    bench.say(f"  {FIGURES_NOTE}")
    bench.say("  fan-in:  left + right -> zip (left.stream_with(right)) -> caller")
    bench.say("  fan-out: source -> 3 sink processors, each counting every value")

    async def sinks_rate(session: Session, flow: Any) -> float:
        outputs = tuple(flow.topology.final_outputs)
        elapsed, _ = await session.timed_run(flow, [IOVal("n", n)], outputs=outputs)
        return n / elapsed

    async def measure(session: Session) -> dict[str, list[float]]:
        await warm_up(session)
        samples: dict[str, list[float]] = {"pipeline": [], "fanin": [], "one_sink": [], "three_sinks": []}
        for _ in range(repeats):
            samples["pipeline"].append(await flow_rate(session, PIPELINE, n))
            samples["fanin"].append(await flow_rate(session, FANIN, n))
            samples["one_sink"].append(await sinks_rate(session, FANOUT_ONE))
            samples["three_sinks"].append(await sinks_rate(session, FANOUT))
        return samples

    samples = bench.session(BACKEND, measure)
    got: dict[str, Any] = {key: max(values) for key, values in samples.items()}

    def ratio(top: str, bottom: str) -> float:
        # Median of per-repeat ratios: a load change hits both sides.
        return median(a / b for a, b in zip(samples[top], samples[bottom], strict=True))

    got["fanin_vs_pipeline"] = ratio("fanin", "pipeline")
    got["three_vs_one_sink"] = ratio("three_sinks", "one_sink")
    bench.row("pipeline (baseline)", fmt_rate(got["pipeline"]), "baseline")
    bench.row(
        "fan-in, zipped pairs", fmt_rate(got["fanin"], "pairs/s"), f"{got['fanin_vs_pipeline']:.3f}x pipeline"
    )
    bench.row("fan-out, 1 sink (baseline)", fmt_rate(got["one_sink"]), "baseline")
    bench.row(
        "fan-out, 3 sinks",
        fmt_rate(got["three_sinks"]),
        f"{got['three_vs_one_sink']:.3f}x one sink",
        f"({3 * got['three_sinks']:,.0f} deliveries/s)",
    )
    bench.record(NAME, n=n, repeats=repeats, backend=BACKEND, **got)
    return got
