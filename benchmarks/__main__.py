"""``python -m benchmarks [--quick] [--json] [--only NAME ...]``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
from typing import Any

import anyio

from . import targets
from ._harness import Bench, Store, dumps, machine, valkey_version

#: Scenario name -> module (each has ``run(bench)``), in running order.
SCENARIOS = {
    "pipeline": "benchmarks.pipeline",
    "codec": "benchmarks.codec",
    "fan": "benchmarks.fan",
    "latency": "benchmarks.latency",
    "runs": "benchmarks.runs",
    "scale": "benchmarks.scale",
    "memory": "benchmarks.memory",
    "telemetry": "benchmarks.telemetry",
    "history": "benchmarks.history",
    "designer": "benchmarks.designer",
    "oncall": "benchmarks.oncall",
    "dashboard": "benchmarks.dashboard",
    "celery": "benchmarks.celery_stream",
    "cluster": "benchmarks.cluster",
    "executors": "benchmarks.executors",
    "runs-celery": "benchmarks.celery_runs",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Datagraph benchmarks: every figure with its ratio to a baseline measured in this run.",
    )
    parser.add_argument("--quick", action="store_true", help="smaller N and fewer repeats (< 3 minutes)")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object with every figure on stdout"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        choices=list(SCENARIOS),
        help=f"run only these scenarios ({', '.join(SCENARIOS)})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)

    names = args.only or list(SCENARIOS)
    store = Store()
    store.start()
    # With --json the human-readable lines go to stderr, the JSON alone to stdout.
    bench = Bench(quick=args.quick, store=store, out=sys.stderr if args.json else sys.stdout)
    started = time.perf_counter()
    try:
        info = machine()
        info["valkey"] = anyio.run(valkey_version, store.port)
        info["load_before"] = os.getloadavg()[0]
        bench.say(
            f"Datagraph benchmarks ({'quick' if args.quick else 'full'}): "
            f"{info['cpu']}, {info['cpus']} CPUs, {info['system']}, Python {info['python']}, "
            f"Valkey {info['valkey']} (embedded, same machine), valkey-glide {info['valkey-glide']}; "
            f"load average {info['load_before']:.2f}"
        )
        for name in names:
            bench.flush_store()
            scenario_started = time.perf_counter()
            importlib.import_module(SCENARIOS[name]).run(bench)
            bench.record(name, seconds=round(time.perf_counter() - scenario_started, 1))
        verdicts = targets.evaluate(bench.figures)
        targets.show(bench, verdicts)
    finally:
        store.stop()
    total = time.perf_counter() - started
    info["load_after"] = os.getloadavg()[0]
    bench.say(f"\n(took {total:.0f} s; load average {info['load_after']:.2f} at the end)")
    if args.json:
        result: dict[str, Any] = {
            "quick": args.quick,
            "machine": info,
            "seconds": round(total, 1),
            "scenarios": bench.figures,
            "targets": verdicts,
        }
        print(dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
