"""memory: a long continuous flow with a slow-ish sink stays flat.

source -> map(x*2) -> slow sink processor (no outputs: nothing piles up for
the caller), N values.  The sink is slower than the stages feeding it, so
their writers spend the run held back by backpressure, and every in-flow
stream is trimmed as its readers consume it.  Sampled every 0.2 s: the
process's RSS (and peak RSS), Valkey's ``used_memory`` (INFO memory), each
edge's backlog (values written minus values its reader has consumed) and each
stream's length in entries; printed at every 10% of the run.

It runs in a child process of its own, so the RSS it reports is not what
earlier scenarios left behind (freed memory that the allocator keeps would
hide growth).

Baselines: RSS and ``used_memory`` just before ``start_flow``; for Valkey
also the sample at 10% of the run, once the streams hold their steady-state
backlog ("flat" means no growth after that).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import anyio

from datagraph import IOVal
from datagraph.store import keys

from ._flows import MEMORY, progress
from ._harness import Bench, Session, Store, fmt_mb, python_path
from .pipeline import warm_up

NAME = "memory"
BACKEND = "asyncio"
SAMPLE_EVERY = 0.2
#: Valkey growth after the 10% mark below this counts as flat, in MB.
FLAT_MB = 5.0
_RESULT = "RESULT "


def _proc_status() -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of this process, in bytes."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(rest.split()[0]) * 1024
    return fields


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run(bench: Bench) -> dict[str, Any]:
    """Measure in a fresh child process, so its RSS is not the other scenarios' leftovers."""
    n = bench.pick(1_000_000, 10_000_000)
    bench.title(NAME, f"source -> map(x*2) -> slow sink processor, N={n:,}; LocalExecutor, {BACKEND}")
    env = {**os.environ, "PYTHONPATH": python_path()}
    argv = [sys.executable, "-m", "benchmarks.memory", "--port", str(bench.store.port), "-n", str(n)]
    got: dict[str, Any] | None = None
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith(_RESULT):
                got = json.loads(line[len(_RESULT) :])
            else:
                bench.say(line.rstrip("\n"))
    if child.returncode != 0 or got is None:
        raise RuntimeError(f"the memory benchmark's child process failed (exit code {child.returncode})")
    show(bench, got)
    return got


def measure(bench: Bench, n: int) -> dict[str, Any]:
    """The measurement itself, in this process."""

    async def measure(session: Session) -> dict[str, Any]:
        supervisor = session.supervisor
        await warm_up(session)
        # One short run of the same flow first, so its code paths are warm.
        run_id = uuid.uuid4().hex
        progress.values = 0
        await supervisor.start_flow(MEMORY, inputs=[IOVal("n", 50_000)], run_id=run_id)
        await session.finish(run_id, MEMORY)

        run_id = uuid.uuid4().hex
        edges = [("nums", "bench-double"), ("out", "bench-slow-sink")]
        streams = [keys.stream(run_id, io) for io, _ in edges]
        backlog_fields = [(f"written:{io}", keys.pos_field(reader, io)) for io, reader in edges]
        progress.values = 0
        rss_start = _proc_status()["VmRSS"]
        exact_peak = _reset_peak_rss()
        valkey_start = await session.used_memory()
        samples: list[dict[str, Any]] = []
        printed = 0
        started = time.perf_counter()

        async def sample() -> dict[str, Any]:
            status = _proc_status()
            lengths = [int(await session.admin.custom_command(["XLEN", key])) for key in streams]
            backlog = []
            for written, read in backlog_fields:
                w = await session.admin.custom_command(["HGET", keys.stats(run_id), written])
                r = await session.admin.custom_command(["HGET", keys.pos(run_id), read])
                backlog.append(int(w or 0) - int(r or 0))
            point = {
                "values": progress.values,
                "seconds": time.perf_counter() - started,
                "rss": status["VmRSS"],
                "peak_rss": status["VmHWM"]
                if exact_peak
                else max([status["VmRSS"], *(s["rss"] for s in samples)]),
                "valkey": await session.used_memory(),
                "entries": lengths,
                "backlog": backlog,
            }
            samples.append(point)
            return point

        def show(point: dict[str, Any]) -> None:
            rate = point["values"] / point["seconds"] if point["seconds"] else 0
            bench.say(
                f"  {point['values']:>11,} values {point['seconds']:5.1f} s {rate:>8,.0f}/s  "
                f"RSS {fmt_mb(point['rss']):>8} (peak {fmt_mb(point['peak_rss'])})  "
                f"Valkey {fmt_mb(point['valkey']):>7}  "
                f"backlog {point['backlog'][0]:>6,} {point['backlog'][1]:>6,}  "
                f"entries {point['entries'][0]:>3} {point['entries'][1]:>3}"
            )

        async def sampler() -> None:
            nonlocal printed
            while True:
                await anyio.sleep(SAMPLE_EVERY)
                point = await sample()
                tenth = point["values"] * 10 // n
                if tenth > printed and point["values"] < n:
                    printed = tenth
                    show(point)

        bench.say(
            f"  before start_flow: RSS {fmt_mb(rss_start)}, Valkey used_memory {fmt_mb(valkey_start)}; "
            "backlog and entries: nums (source -> map), out (map -> sink)"
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(sampler)
            await supervisor.start_flow(MEMORY, inputs=[IOVal("n", n)], run_id=run_id)
            state = await supervisor.wait(run_id, timeout=1800)
            elapsed = time.perf_counter() - started
            tg.cancel_scope.cancel()
        if state != "succeeded" or progress.values != n:
            raise RuntimeError(f"memory flow ended {state} after {progress.values:,} of {n:,} values")
        end = await sample()
        show(end)
        await session.forget(run_id, MEMORY)

        steady = next((s for s in samples if s["values"] >= n // 10), samples[0])
        after = [s for s in samples if s["values"] >= steady["values"]]
        return {
            "n": n,
            "seconds": elapsed,
            "values_per_s": n / elapsed,
            "rss_start_mb": rss_start / 2**20,
            "rss_peak_mb": max(s["peak_rss"] for s in samples) / 2**20,
            "rss_end_mb": end["rss"] / 2**20,
            "rss_growth_mb": (max(s["peak_rss"] for s in samples) - rss_start) / 2**20,
            "valkey_start_mb": valkey_start / 2**20,
            "valkey_at_10pct_mb": steady["valkey"] / 2**20,
            "valkey_peak_mb": max(s["valkey"] for s in samples) / 2**20,
            "valkey_end_mb": end["valkey"] / 2**20,
            "valkey_growth_mb": (max(s["valkey"] for s in after) - steady["valkey"]) / 2**20,
            "max_stream_entries": max(max(s["entries"]) for s in samples),
            "max_backlog": max(max(s["backlog"]) for s in samples),
            "samples": [
                {
                    "values": s["values"],
                    "seconds": round(s["seconds"], 2),
                    "rss_mb": round(s["rss"] / 2**20, 1),
                    "valkey_mb": round(s["valkey"] / 2**20, 2),
                    "entries": s["entries"],
                    "backlog": s["backlog"],
                }
                for s in samples[:: max(1, len(samples) // 50)]
            ],
        }

    got: dict[str, Any] = bench.session(BACKEND, measure)
    got["valkey_flat"] = got["valkey_growth_mb"] < FLAT_MB
    return got


def show(bench: Bench, got: dict[str, Any]) -> None:
    flat = got["valkey_flat"]
    bench.row(
        "throughput with the slow sink", f"{got['values_per_s']:,.0f} values/s", f"{got['seconds']:.1f} s"
    )
    bench.row(
        "process RSS",
        f"peak {got['rss_peak_mb']:.1f} MB",
        f"{got['rss_peak_mb'] / got['rss_start_mb']:.2f}x start",
        f"growth {got['rss_growth_mb']:+.1f} MB over {got['rss_start_mb']:.1f} MB at start",
    )
    bench.row(
        "Valkey used_memory",
        f"peak {got['valkey_peak_mb']:.1f} MB",
        f"{got['valkey_peak_mb'] / got['valkey_start_mb']:.2f}x start",
        f"{got['valkey_growth_mb']:+.1f} MB after the 10% mark: {'flat' if flat else 'GROWING'}",
    )
    bench.row(
        "largest backlog of an edge",
        f"{got['max_backlog']:,} values",
        "limit 10,000 + one batch being read",
        f"longest stream {got['max_stream_entries']:,} entries (trimmed as read)",
    )
    bench.record(NAME, backend=BACKEND, **got)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    parser.add_argument("--port", type=int, required=True, help="port of the Valkey to use")
    parser.add_argument("-n", type=int, default=1_000_000)
    args = parser.parse_args()
    bench = Bench(quick=True, store=Store.at(args.port))
    got = measure(bench, args.n)
    print(_RESULT + json.dumps(got), flush=True)


if __name__ == "__main__":
    main()
