"""local_hand_over: in-flow streams handed over in the process, on against off, in one process.

    python -m benchmarks.local_hand_over [--rounds 6] [--backend asyncio|trio]

Each round attaches a supervisor with ``hand_over_local`` on and one with it
off (in alternating order) on the same embedded Valkey and measures, for
the 2-stage pipeline on the LocalExecutor:

* one value, ``start_flow`` to ``first()``, p50 of 100 runs, each run after
  the previous one has finished (as the ``latency`` scenario does);
* one-value runs 50 at a time (500 runs): runs per second and the event-loop
  thread's CPU per run.

It prints each round and the median of the per-round ratios on / off: the
machine's load moves both sides of a round alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import anyio

from datagraph import IOVal

from ._flows import PIPELINE
from ._harness import Bench, Session, Store, percentile
from .pipeline import warm_up

LATENCY_RUNS = 100
RATE_RUNS = 500
CONCURRENCY = 50


async def _measure(session: Session) -> dict[str, float]:
    await warm_up(session)
    supervisor = session.supervisor
    samples = []
    for _ in range(LATENCY_RUNS):
        started = time.perf_counter()
        outputs = await supervisor.start_flow(PIPELINE, inputs=[IOVal("n", 1)])
        if await outputs["out"].first() != 0:
            raise RuntimeError("a one-value run gave the wrong value")
        samples.append(time.perf_counter() - started)
        await session.finish(outputs["out"].run_id, PIPELINE)

    async def worker() -> None:
        for _ in range(RATE_RUNS // CONCURRENCY):
            outputs = await supervisor.start_flow(PIPELINE, inputs=[IOVal("n", 1)])
            if [v async for v in outputs["out"].stream()] != [0]:
                raise RuntimeError("a one-value run gave the wrong values")

    cpu, wall = time.thread_time(), time.perf_counter()
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for _ in range(CONCURRENCY):
                tg.start_soon(worker)
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    return {
        "p50_ms": percentile(samples, 50) * 1000,
        "runs_per_s": RATE_RUNS / wall,
        "cpu_ms_per_run": cpu / RATE_RUNS * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.local_hand_over")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()
    store = Store()
    store.start()
    try:
        bench = Bench(quick=True, store=store)
        ratios: dict[str, list[float]] = {"p50_ms": [], "runs_per_s": [], "cpu_ms_per_run": []}
        for round_no in range(args.rounds):
            got: dict[bool, dict[str, Any]] = {}
            for local in (True, False) if round_no % 2 == 0 else (False, True):
                got[local] = bench.session(args.backend, _measure, hand_over_local=local)
                bench.flush_store()
            on, off = got[True], got[False]
            for name in ratios:
                ratios[name].append(on[name] / off[name])
            print(
                f"round {round_no + 1} ({args.backend}): one value p50 {on['p50_ms']:.2f} ms on, "
                f"{off['p50_ms']:.2f} ms off; 50 at a time {on['runs_per_s']:.0f} vs "
                f"{off['runs_per_s']:.0f} runs/s, loop CPU {on['cpu_ms_per_run']:.2f} vs "
                f"{off['cpu_ms_per_run']:.2f} ms per run",
                flush=True,
            )
        print("median of per-round ratios, on / off:")
        for name, values in ratios.items():
            print(f"  {name:16} {statistics.median(values):.3f}x")
    finally:
        store.stop()


if __name__ == "__main__":
    main()
