"""runs: how many small runs per second, against the store work such a run needs.

A run here is what a new user tries first: ``start_flow`` of the 2-stage
``source -> map(x*2)`` flow with one value (``n=1``) on the LocalExecutor, the
caller reading ``outputs["out"].stream()`` to its end.  Runs go one after
another (1 at a time) and 50 at a time, all in this process.

Baseline, measured in the same session: the bare store work of such a run,
with a plain valkey-glide client at the same concurrency: per run, three
streams each written once (``XADD``), read once (``XREAD``) and deleted
(``DEL``), 9 sequential round trips.  It is the floor of what any engine
that keeps its streams in Valkey pays per run.

After each timed batch of runs (untimed) every run is checked to have
succeeded and its keys are deleted.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import anyio

from datagraph import IOVal

from ._flows import PIPELINE
from ._harness import BACKENDS, FIGURES_NOTE, Bench, Session, median
from .pipeline import warm_up

NAME = "runs"
CONCURRENCY = (1, 50)


async def _spread(total: int, concurrency: int, one: Any) -> float:
    """Seconds to call ``one(i)`` for i in range(total), ``concurrency`` at a time."""
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < total:
            i = next_index
            next_index += 1
            await one(i)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return time.perf_counter() - started


async def bare_rate(session: Session, total: int, concurrency: int) -> float:
    """Runs/s of the bare store work (3 XADD + 3 XREAD + 3 DEL per run)."""
    client = session.admin
    prefix = f"bench:runs:{uuid.uuid4().hex}"

    async def one(i: int) -> None:
        streams = [f"{prefix}:{{{i}}}:{part}" for part in ("n", "nums", "out")]
        for key in streams:
            await client.custom_command(["XADD", key, "*", "b", b"\x80\x05K\x01."])
            reply = await client.custom_command(["XREAD", "COUNT", "256", "STREAMS", key, "0-0"])
            if not reply:
                raise RuntimeError(f"bare run read nothing back from {key}")
        for key in streams:
            await client.custom_command(["DEL", key])

    return total / await _spread(total, concurrency, one)


async def flow_rate(session: Session, total: int, concurrency: int) -> float:
    """Runs/s of the 2-stage flow with one value, ``concurrency`` runs at a time."""
    supervisor = session.supervisor
    run_ids: list[str] = []

    async def one(i: int) -> None:
        outputs = await supervisor.start_flow(PIPELINE, inputs=[IOVal("n", 1)])
        out = outputs["out"]
        got = [v async for v in out.stream()]
        if got != [0]:
            raise RuntimeError(f"run {out.run_id} delivered {got}, expected [0]")
        run_ids.append(out.run_id)

    elapsed = await _spread(total, concurrency, one)
    # Untimed: every run must have ended well; then its keys go.
    for run_id in run_ids:
        await session.finish(run_id, PIPELINE)
    return total / elapsed


def run(bench: Bench) -> dict[str, Any]:
    totals = {1: bench.pick(300, 1000), 50: bench.pick(1000, 3000)}
    repeats = bench.pick(2, 3)
    bench.title(NAME, f"one-value runs of source -> map(x*2), LocalExecutor; best of {repeats}")
    bench.say("  baseline: the bare store work of a run (3 XADD + 3 XREAD + 3 DEL) at the same concurrency")
    bench.say(f"  {FIGURES_NOTE}")

    async def one_round(session: Session) -> dict[str, float]:
        await warm_up(session)
        # At the highest concurrency: the readers' blocking clients (3 per run) are opened
        # here, not while the 50-at-a-time runs are timed.
        await flow_rate(session, 3 * max(CONCURRENCY), max(CONCURRENCY))
        got: dict[str, float] = {}
        for c in CONCURRENCY:
            got[f"bare_{c}"] = await bare_rate(session, totals[c], c)
            got[f"flow_{c}"] = await flow_rate(session, totals[c], c)
        return got

    rounds: dict[str, list[dict[str, float]]] = {backend: [] for backend in BACKENDS}
    for _ in range(repeats):
        for backend in BACKENDS:
            rounds[backend].append(bench.session(backend, one_round))

    figures: dict[str, Any] = {"repeats": repeats, "runs": totals}
    for backend in BACKENDS:
        runs = rounds[backend]
        got: dict[str, float] = {key: max(r[key] for r in runs) for key in runs[0]}
        for c in CONCURRENCY:
            got[f"flow_{c}_vs_bare"] = median(r[f"flow_{c}"] / r[f"bare_{c}"] for r in runs)
            bench.row(
                f"bare store work, {c} at a time, {backend}",
                f"{got[f'bare_{c}']:>9,.0f} runs/s",
                "baseline",
            )
            bench.row(
                f"flow runs, {c} at a time, {backend}",
                f"{got[f'flow_{c}']:>9,.0f} runs/s",
                f"{got[f'flow_{c}_vs_bare']:.3f}x bare",
                f"{totals[c]:,} runs",
            )
        figures[backend] = got
    bench.record(NAME, **figures)
    return figures
