"""executors: ProcessExecutor against LocalExecutor on the same four-stage pipeline.

A CPU-bound pipeline (each stage spends a fixed amount of pure-Python work per
value) shows what every core buys; the same pipeline with trivial stages shows
what crossing processes costs.  Each round measures LocalExecutor and
ProcessExecutor with 1 .. CPU-count workers back to back, so a ratio compares
runs under the same machine load.  The pool's start-up (spawn, import,
connect) is measured on its own, against a bare ``python -c "import datagraph"``
in the same run, and kept out of the throughput figures.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from typing import Any

from datagraph import IOVal
from datagraph.executors import Executor, LocalExecutor, ProcessExecutor
from datagraph.executors.process import default_workers

from ._harness import FIGURES_NOTE, Bench, Session, fmt_rate, median
from ._stages import STAGES, spin

NAME = "executors"
#: Pure-Python work per value per stage (the rounds of spin() are calibrated to it).
WORK_PER_VALUE = 50e-6


def calibrate() -> int:
    """Rounds of ``spin`` that take about ``WORK_PER_VALUE`` seconds here."""
    rounds = 10_000
    best = min(_time(spin, 1, rounds) for _ in range(5))
    return max(1, round(rounds * WORK_PER_VALUE / best))


def _time(func: Any, *args: Any) -> float:
    started = time.perf_counter()
    func(*args)
    return time.perf_counter() - started


def import_seconds() -> float:
    """A fresh interpreter importing datagraph: the floor of one worker's start."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import datagraph"], check=True, timeout=60)
    return time.perf_counter() - started


async def rate(session: Session, n: int, rounds: int) -> float:
    elapsed, read = await session.timed_run(STAGES, [IOVal("job", (n, rounds))])
    if read != n:
        raise RuntimeError(f"the four-stage pipeline delivered {read} values, expected {n}")
    return n / elapsed


def run(bench: Bench) -> dict[str, Any]:
    cores = default_workers()
    counts = list(range(1, max(cores, 2) + 1))
    rounds = calibrate()
    n_cpu = bench.pick(3_000, 8_000)
    n_thin = bench.pick(50_000, 200_000)
    repeats = bench.pick(2, 3)
    bench.title(NAME, f"a four-stage pipeline on LocalExecutor and ProcessExecutor; best of {repeats}")
    bench.say(
        f"  CPU-bound: {WORK_PER_VALUE * 1e6:.0f} us of pure-Python work per value per stage "
        f"(spin x{rounds}), N={n_cpu:,}; trivial stages: N={n_thin:,}; {cores} CPUs; asyncio unless said"
    )
    bench.say("  baseline: LocalExecutor (every stage on the caller's one event loop), same round")
    bench.say(f"  {FIGURES_NOTE}")

    def measure(executor: Executor, backend: str = "asyncio") -> dict[str, float]:
        async def one(session: Session) -> dict[str, float]:
            got: dict[str, float] = {}
            if isinstance(executor, ProcessExecutor):
                started = time.perf_counter()
                await executor.start(session.supervisor)
                got["startup"] = time.perf_counter() - started
            await rate(session, 200, rounds)  # warm-up: connections, imports in the workers
            got["cpu"] = await rate(session, n_cpu, rounds)
            got["thin"] = await rate(session, n_thin, 0)
            return got

        return bench.session(backend, one, executor=executor)

    rounds_seen: list[dict[str, dict[str, float]]] = []
    bare: list[float] = []
    # Each comparison's two sides run next to each other, and every other round runs in
    # reverse order, so load that comes and goes does not favour one side.
    plan: list[tuple[str, Any, str]] = [("local", LocalExecutor, "asyncio")]
    plan += [(f"process{k}", functools.partial(ProcessExecutor, max_workers=k), "asyncio")
             for k in reversed(counts)]  # fmt: skip
    # The workers run the caller's backend: the main comparison on Trio too.
    plan += [
        ("trio_local", LocalExecutor, "trio"),
        ("trio_process", functools.partial(ProcessExecutor, max_workers=max(counts)), "trio"),
    ]
    for i in range(repeats):
        seen = {
            name: measure(make(), backend) for name, make, backend in (plan[::-1] if i % 2 else plan)
        }
        rounds_seen.append(seen)
        bare.append(import_seconds())

    def best(name: str, key: str) -> float:
        return max(r[name][key] for r in rounds_seen)

    def ratio(name: str, key: str, baseline: str = "local") -> float:
        return median(r[name][key] / r[baseline][key] for r in rounds_seen)

    figures: dict[str, Any] = {
        "cores": cores, "work_per_value_s": WORK_PER_VALUE, "rounds": rounds,
        "n_cpu": n_cpu, "n_thin": n_thin, "repeats": repeats,
        "local": {"cpu": best("local", "cpu"), "thin": best("local", "thin")},
    }  # fmt: skip
    bench.row("LocalExecutor, CPU-bound", fmt_rate(figures["local"]["cpu"]), "baseline")
    for k in counts:
        name = f"process{k}"
        got = {"cpu": best(name, "cpu"), "cpu_vs_local": ratio(name, "cpu")}
        figures[name] = got
        bench.row(
            f"ProcessExecutor({k}), CPU-bound", fmt_rate(got["cpu"]), f"{got['cpu_vs_local']:.2f}x local"
        )
    trio = {
        "local_cpu": best("trio_local", "cpu"), "process_cpu": best("trio_process", "cpu"),
        "cpu_vs_local": ratio("trio_process", "cpu", "trio_local"),
    }  # fmt: skip
    figures["trio"] = trio
    bench.row("LocalExecutor, CPU-bound, Trio", fmt_rate(trio["local_cpu"]), "baseline")
    bench.row(
        f"ProcessExecutor({max(counts)}), CPU-bound, Trio", fmt_rate(trio["process_cpu"]),
        f"{trio['cpu_vs_local']:.2f}x local",
    )  # fmt: skip
    bench.row("LocalExecutor, trivial stages", fmt_rate(figures["local"]["thin"]), "baseline")
    for k in counts:
        name = f"process{k}"
        got = figures[name]
        got["thin"] = best(name, "thin")
        got["thin_vs_local"] = ratio(name, "thin")
        label = f"ProcessExecutor({k}), trivial stages"
        bench.row(label, fmt_rate(got["thin"]), f"{got['thin_vs_local']:.2f}x local")
    floor = min(bare)
    figures["import_datagraph_s"] = floor
    bench.row("python -c 'import datagraph'", f"{floor * 1000:>11,.0f} ms", "baseline")
    for k in counts:
        name = f"process{k}"
        startup = min(r[name]["startup"] for r in rounds_seen)
        figures[name]["startup_s"] = startup
        bench.row(f"pool start-up, {k} worker(s)", f"{startup * 1000:>11,.0f} ms", f"{startup / floor:.2f}x")
    full = figures[f"process{max(counts)}"]
    figures["best_cpu_vs_local"] = full["cpu_vs_local"]
    bench.record(NAME, **figures)
    return figures
