"""run_cpu: the calling process's CPU per small run, the figure that bounds runs per second.

    python -m benchmarks.run_cpu [--concurrency 50] [--runs 1000] [--rounds 3]
                                 [--backend asyncio|trio] [--profile]

One-value runs of the 2-stage pipeline (``start_flow``, then
``outputs["out"].stream()`` to its end) on the LocalExecutor and an embedded
Valkey, ``--concurrency`` at a time, after the warm-up of the ``runs``
benchmark.  Per round it prints the event-loop thread's CPU per run
(``time.thread_time``: what other load on the machine moves least), the wall
time per run and runs per second; then, over one more batch of 500 runs under
cProfile, the Python function calls per run (which load does not move at all)
and how many flusher tasks the runtime started.  ``--profile`` also prints
that batch's busiest functions.

There is no baseline in the same process: compare two versions of the code by
running this script on each, alternately, a few times, and compare the
medians (see docs/performance.md, "Less CPU per run in the calling process").
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import anyio

from datagraph import IOVal

from ._flows import PIPELINE
from ._harness import Session, quick_session
from .pipeline import warm_up

#: Runs of the profiled batch.
PROFILED = 500


async def _measure(session: Session, args: argparse.Namespace) -> None:
    await warm_up(session)
    supervisor = session.supervisor

    async def one() -> None:
        outputs = await supervisor.start_flow(PIPELINE, inputs=[IOVal("n", 1)])
        got = [value async for value in outputs["out"].stream()]
        if got != [0]:
            raise RuntimeError(f"a one-value run gave {got!r}, not [0]")

    async def batch(runs: int) -> None:
        async def worker() -> None:
            for _ in range(runs // args.concurrency):
                await one()

        with anyio.fail_after(max(60.0, runs * 0.1)):
            async with anyio.create_task_group() as tg:
                for _ in range(args.concurrency):
                    tg.start_soon(worker)

    await batch(max(100, args.concurrency * 2))  # the readers' connections, once
    runs = args.runs - args.runs % args.concurrency
    cpu: list[float] = []
    for round_ in range(1, args.rounds + 1):
        wall, started = time.perf_counter(), time.thread_time()
        await batch(runs)
        cpu.append((time.thread_time() - started) / runs * 1e3)
        wall = time.perf_counter() - wall
        print(
            f"  round {round_}: loop-thread CPU {cpu[-1]:.2f} ms/run, wall {wall / runs * 1e3:.2f} ms/run, "
            f"{runs / wall:,.0f} runs/s"
        )
    runtime = await supervisor.runtime()
    flushers = runtime.flushers.started
    profile = cProfile.Profile()
    profile.enable()
    await batch(PROFILED - PROFILED % args.concurrency)
    profile.disable()
    stats = pstats.Stats(profile)
    calls = sum(entry[1] for entry in stats.stats.values())  # type: ignore[attr-defined]
    print(
        f"{args.backend}, {args.concurrency} at a time: loop-thread CPU per run median "
        f"{statistics.median(cpu):.2f} ms (best {min(cpu):.2f}); "
        f"{calls / PROFILED:,.0f} Python calls per run; "
        f"flusher tasks started in the profiled {PROFILED} runs: {runtime.flushers.started - flushers}"
    )
    if args.profile:
        stats.sort_stats("tottime").print_stats(30)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_cpu", description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--runs", type=int, default=1000, help="runs per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--profile", action="store_true", help="print the profiled batch's busiest functions")
    args = parser.parse_args()
    if args.concurrency < 1 or args.runs < args.concurrency or args.rounds < 1:
        parser.error("give --concurrency >= 1, --runs >= --concurrency and --rounds >= 1")
    quick_session(args.backend, lambda session: _measure(session, args))


if __name__ == "__main__":
    main()
