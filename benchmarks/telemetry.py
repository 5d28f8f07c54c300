"""telemetry overhead: the pipeline with telemetry on vs off.

``Supervisor.attach(..., telemetry=False)`` turns off registrations,
heartbeats and per-edge metrics.  Sessions alternate on/off so that both
see the same machine load; the figures are the best runs, the ratio the
median of the per-round ratios.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from ._flows import PIPELINE
from ._harness import FIGURES_NOTE, Bench, Session, fmt_rate, on_vs_off
from .pipeline import flow_rate, warm_up

NAME = "telemetry"
BACKEND = "asyncio"


def run(bench: Bench) -> dict[str, Any]:
    n = bench.pick(100_000, 300_000)
    rounds = bench.pick(4, 6)
    bench.title(
        NAME,
        f"the pipeline with telemetry on vs off; N={n:,}, {BACKEND}, {rounds} rounds of 2 runs each way",
    )
    bench.say(f"  {FIGURES_NOTE}")
    if importlib.util.find_spec("datagraph.telemetry") is None:
        bench.say("  (this engine has no datagraph.telemetry module yet: expect about 1.00x)")

    async def twice(session: Session) -> float:
        await warm_up(session)
        return max([await flow_rate(session, PIPELINE, n) for _ in range(2)])

    on, off, ratio = on_vs_off(bench, BACKEND, twice, "telemetry", rounds)
    bench.row("telemetry=False", fmt_rate(off), "baseline")
    bench.row("telemetry=True", fmt_rate(on), f"{ratio:.3f}x telemetry off", f"overhead {1 - ratio:+.1%}")
    got = {"n": n, "rounds": rounds, "backend": BACKEND, "on": on, "off": off, "on_vs_off": ratio}
    bench.record(NAME, **got)
    return got
