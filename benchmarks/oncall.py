"""oncall: what keeping inputs for re-runs costs a run's start, and /metrics as runs pile up.

* start latency: ``start_flow`` of source -> map with n=1, then ``first()``,
  with the inputs kept for re-runs (the default) and with
  ``rerun_inputs_max_bytes=0`` (the baseline); sessions alternate so both
  see the same load, and the ratio is the median of per-round p50 ratios.
* /metrics: series exported and scrape time with 1 running run of a flow and
  with 20 running runs of the same flow (the baseline is the 1-run scrape):
  without a run label the series count stays flat.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx

from datagraph import IOVal

from ._flows import PIPELINE, TICKS
from ._harness import Bench, Session, median, percentile
from .pipeline import warm_up

NAME = "oncall"
BACKEND = "asyncio"


def run(bench: Bench) -> dict[str, Any]:
    starts = bench.pick(100, 200)
    rounds = bench.pick(3, 5)
    bench.title(NAME, f"inputs kept for re-runs vs not ({starts} starts x {rounds} rounds), /metrics vs runs")

    async def start_latency(session: Session) -> float:
        await warm_up(session)
        samples = []
        for _ in range(starts):
            began = time.perf_counter()
            outputs = await session.supervisor.start_flow(PIPELINE, inputs=[IOVal("n", 1)])
            await outputs["out"].first()
            samples.append(time.perf_counter() - began)
            await session.finish(outputs["out"].run_id, PIPELINE)
        return percentile(samples, 50)

    kept: list[float] = []
    off: list[float] = []
    for _ in range(rounds):
        kept.append(bench.session(BACKEND, start_latency))
        off.append(bench.session(BACKEND, start_latency, rerun_inputs_max_bytes=0))
    ratio = median(a / b for a, b in zip(kept, off, strict=True))
    bench.row("start -> first(), inputs not kept", f"p50 {min(off) * 1000:.2f} ms", "baseline")
    bench.row("start -> first(), inputs kept", f"p50 {min(kept) * 1000:.2f} ms", f"{ratio:.3f}x not kept")

    async def scrape(session: Session) -> dict[str, Any]:
        from web.app import create_app

        app = create_app(supervisor=session.supervisor, token="", warm_up_graphviz=False)
        figures: dict[str, Any] = {}
        run_ids: list[str] = []
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                for count in (1, 20):
                    while len(run_ids) < count:
                        outputs = await session.supervisor.start_flow(
                            TICKS, inputs=[IOVal("n", 100), IOVal("pace", 0.05)]  # about 5 s
                        )
                        run_ids.append(outputs["out"].run_id)
                    await anyio.sleep(1.5)  # every run has written and published its counters
                    await client.get("/metrics")
                    times = []
                    for _ in range(10):
                        began = time.perf_counter()
                        text = (await client.get("/metrics")).text
                        times.append(time.perf_counter() - began)
                    series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
                    figures[count] = {"series": series, "scrape_ms": percentile(times, 50) * 1000}
        for run_id in run_ids:  # let them end on their own: nothing is cut off mid-write
            await session.finish(run_id, TICKS)
        return figures

    metrics = bench.session(BACKEND, scrape)
    one, many = metrics[1], metrics[20]
    bench.row("/metrics, 1 running run", f"{one['series']} series", "baseline", f"{one['scrape_ms']:.1f} ms")
    bench.row(
        "/metrics, 20 running runs", f"{many['series']} series", f"{many['series'] / one['series']:.2f}x",
        f"{many['scrape_ms']:.1f} ms ({many['scrape_ms'] / one['scrape_ms']:.1f}x)",
    )
    got = {
        "start_p50_kept_ms": min(kept) * 1000, "start_p50_not_kept_ms": min(off) * 1000,
        "kept_vs_not": ratio, "metrics_series_1": one["series"], "metrics_series_20": many["series"],
        "scrape_ms_1": one["scrape_ms"], "scrape_ms_20": many["scrape_ms"],
    }
    bench.record(NAME, **got)
    return got
