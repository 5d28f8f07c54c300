"""latency: one value end to end, and per-value latency under light load.

* one value: ``start_flow`` of source -> map(x*2) with n=1, then ``first()``
  on its output; p50/p99 over 200 runs (each run waits for the previous one
  to finish, untimed).
* light load: a source yielding one value every 10 ms, stamped when yielded,
  forwarded by a second stage; the caller records read time - yield time.

Baseline: the raw glide relay moving single-value entries at the same pace
(its p50/p99 per-value latency), measured in the same session.
"""

from __future__ import annotations

import time
from typing import Any

from datagraph import IOVal

from ._flows import PIPELINE, TICKS
from ._harness import Bench, Session, percentile
from .pipeline import warm_up
from .relay import relay_latencies

NAME = "latency"
BACKEND = "asyncio"
RUNS = 200
PACE = 0.010


def _summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(samples, 50) * 1000,
        "p99_ms": percentile(samples, 99) * 1000,
        "max_ms": max(samples) * 1000,
        "samples": len(samples),
    }


def run(bench: Bench) -> dict[str, Any]:
    ticks = bench.pick(150, 300)
    bench.title(NAME, f"LocalExecutor, {BACKEND}")

    async def one_value(session: Session) -> list[float]:
        supervisor = session.supervisor
        samples = []
        for _ in range(RUNS):
            started = time.perf_counter()
            outputs = await supervisor.start_flow(PIPELINE, inputs=[IOVal("n", 1)])
            await outputs["out"].first()
            samples.append(time.perf_counter() - started)
            await session.finish(outputs["out"].run_id, PIPELINE)
        return samples

    async def light_load(session: Session) -> list[float]:
        samples = []
        outputs = await session.supervisor.start_flow(TICKS, inputs=[IOVal("n", ticks), IOVal("pace", PACE)])
        async for stamp in outputs["out"].stream():
            samples.append(time.perf_counter() - stamp)
        await session.finish(outputs["out"].run_id, TICKS)
        return samples

    async def measure(session: Session) -> dict[str, Any]:
        await warm_up(session)
        relay = await relay_latencies(session.bench.store.port, ticks, pace=PACE)
        return {
            "relay": _summary(relay),
            "one_value": _summary(await one_value(session)),
            "light_load": _summary(await light_load(session)),
        }

    got: dict[str, Any] = bench.session(BACKEND, measure)
    relay, one, light = got["relay"], got["one_value"], got["light_load"]
    bench.row(
        f"relay, 1 value/entry every {PACE * 1000:.0f} ms",
        f"p50 {relay['p50_ms']:.2f} ms",
        "baseline",
        f"p99 {relay['p99_ms']:.2f} ms, {relay['samples']} values",
    )
    bench.row(
        "one value, start_flow -> first()",
        f"p50 {one['p50_ms']:.2f} ms",
        f"{one['p50_ms'] / relay['p50_ms']:.1f}x relay",
        f"p99 {one['p99_ms']:.2f} ms ({one['p99_ms'] / relay['p99_ms']:.1f}x), {one['samples']} runs",
    )
    bench.row(
        f"light load, 1 value every {PACE * 1000:.0f} ms",
        f"p50 {light['p50_ms']:.2f} ms",
        f"{light['p50_ms'] / relay['p50_ms']:.1f}x relay",
        f"p99 {light['p99_ms']:.2f} ms ({light['p99_ms'] / relay['p99_ms']:.1f}x), {light['samples']} values",
    )
    got["one_value"]["p50_vs_relay"] = one["p50_ms"] / relay["p50_ms"]
    got["one_value"]["p99_vs_relay"] = one["p99_ms"] / relay["p99_ms"]
    got["light_load"]["p50_vs_relay"] = light["p50_ms"] / relay["p50_ms"]
    bench.record(NAME, backend=BACKEND, pace_ms=PACE * 1000, **got)
    return got
