"""Profile the pipeline scenario: where does the time go?

    python -m benchmarks.profile                      # cProfile, top functions by own time
    python -m benchmarks.profile --payload records    # the 1 KiB dict pipeline
    python -m benchmarks.profile --backend trio
    py-spy record -o pipeline.svg -- python -m benchmarks.profile --plain   # sampling profile

cProfile charges its own overhead to every Python call, which inflates the
per-value functions; read its table for *which* functions matter and the
sampling profiler (py-spy) for *how much*.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

from datagraph import IOVal

from ._flows import PIPELINE, RECORDS
from ._harness import Bench, Session, Store
from .pipeline import warm_up


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--payload", default="ints", choices=["ints", "records"])
    parser.add_argument("-n", type=int, default=0, help="values (default 300,000 ints or 60,000 records)")
    parser.add_argument("--plain", action="store_true", help="no cProfile (for py-spy)")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--sort", default="tottime", choices=["tottime", "cumtime", "ncalls"])
    args = parser.parse_args()
    flow = PIPELINE if args.payload == "ints" else RECORDS
    n = args.n or (300_000 if args.payload == "ints" else 60_000)

    store = Store()
    store.start()
    try:
        bench = Bench(quick=True, store=store)
        profiler = cProfile.Profile()

        async def measure(session: Session) -> float:
            await warm_up(session)
            supervisor = session.supervisor
            if not args.plain:
                profiler.enable()
            started = time.perf_counter()
            outputs = await supervisor.start_flow(flow, inputs=[IOVal("n", n)])
            async for _ in outputs["out"].stream():
                pass
            elapsed = time.perf_counter() - started
            if not args.plain:
                profiler.disable()
            await session.finish(outputs["out"].run_id, flow)
            return elapsed

        elapsed = bench.session(args.backend, measure)
    finally:
        store.stop()
    rate = n / elapsed
    under = "" if args.plain else " (under cProfile)"
    what = f"{args.payload} pipeline on {args.backend}"
    print(f"{what}: {n:,} values in {elapsed:.2f} s = {rate:,.0f} values/s{under}")
    if not args.plain:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.strip_dirs().sort_stats(args.sort).print_stats(args.top)
        print(out.getvalue())


if __name__ == "__main__":
    main()
