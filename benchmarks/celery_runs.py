"""runs-celery: one-value runs per second on Celery, against a 2-task Celery chain per run.

Two ``celery worker`` processes (prefork, ``-c 2`` each), both implementing
both processors of the pipeline; this process implements nothing and starts
runs through the ``CeleryExecutor``, reading ``outputs["out"].stream()`` to
its end, one at a time and 50 at a time (as the ``runs`` scenario does on the
LocalExecutor).

Baseline, in the same session: plain Celery with two workers of the same
kind, a chain ``double.s(1) | done.s()`` per run (two tasks, as a run has two
processors), kept at the same concurrency: a new chain is sent as soon as one
has been counted done (the last task increments a counter, polled every
2 ms).
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import anyio.to_thread

from datagraph import Flow, IOVal

from ._harness import BACKENDS, Bench, Session
from .celery_stream import Worker, Workers, broker_url, unavailable
from .runs import CONCURRENCY, _spread

NAME = "runs-celery"
BACKEND = BACKENDS[0]
#: Seconds a batch of chains may take before the benchmark gives up on it.
CHAIN_DEADLINE = 120.0


def run(bench: Bench) -> dict[str, Any]:
    totals = {1: bench.pick(100, 300), 50: bench.pick(500, 1500)}
    bench.title(NAME, "one-value runs on Celery (2 workers) vs a 2-task Celery chain per run")
    why = unavailable()
    if why is not None:
        bench.say(f"  skipped: {why}")
        bench.record(NAME, skipped=why)
        return {"skipped": why}

    from datagraph.executors import CeleryExecutor

    from .celery_service import CHAIN_QUEUE, DONE_KEY, PROCESSORS, make_app

    flow = Flow.from_processors(*PROCESSORS, name="bench-celery-runs").resolve()
    names = ",".join(p.name for p in PROCESSORS)

    async def flow_rate(session: Session, total: int, concurrency: int) -> float:
        run_ids: list[str] = []

        async def one(i: int) -> None:
            outputs = await session.supervisor.start_flow(flow, inputs=[IOVal("n", 1)])
            got = [v async for v in outputs["out"].stream()]
            if got != [0]:
                raise RuntimeError(f"run {outputs['out'].run_id} delivered {got}, expected [0]")
            run_ids.append(outputs["out"].run_id)

        elapsed = await _spread(total, concurrency, one)
        for run_id in run_ids:
            await session.finish(run_id, flow)
        return total / elapsed

    def streaming() -> dict[str, float]:
        workers = Workers(*(Worker(bench, f"runs{i}", implement=names, concurrency=2) for i in (1, 2)))

        async def measure(session: Session) -> dict[str, float]:
            # The first run also waits (worker_grace) for the workers to come up.
            await flow_rate(session, 20, 10)
            return {f"flow_{c}": await flow_rate(session, totals[c], c) for c in CONCURRENCY}

        executor = CeleryExecutor(make_app(broker_url(bench)), worker_grace=60)
        with workers:
            try:
                return bench.session(BACKEND, measure, executor=executor)
            except BaseException:
                for worker in workers.workers:
                    bench.say(f"  --- log of worker {worker.name}:\n{worker.tail()}")
                raise

    def chained() -> dict[str, float]:
        workers = Workers(
            *(Worker(bench, f"chain{i}", implement="", concurrency=2, queues=CHAIN_QUEUE, streaming=False)
              for i in (1, 2))
        )  # fmt: skip
        app = make_app(broker_url(bench))
        from celery import chain

        def send(count: int) -> None:
            for _ in range(count):
                chain(
                    app.signature("bench.double", args=(1,), queue=CHAIN_QUEUE),
                    app.signature("bench.done", queue=CHAIN_QUEUE),
                ).apply_async()

        async def chain_rate(session: Session, total: int, concurrency: int) -> float:
            await session.admin.custom_command(["DEL", DONE_KEY])
            sent = done = 0
            started = time.perf_counter()
            with anyio.fail_after(CHAIN_DEADLINE):
                while done < total:
                    room = min(concurrency - (sent - done), total - sent)
                    if room > 0:
                        await anyio.to_thread.run_sync(send, room)
                        sent += room
                    await anyio.sleep(0.002)
                    done = int(await session.admin.custom_command(["GET", DONE_KEY]) or 0)
                    for worker in workers.workers:
                        worker.check_alive()
            return total / (time.perf_counter() - started)

        async def measure(session: Session) -> dict[str, float]:
            await chain_rate(session, 20, 10)  # the workers are up and warm
            return {f"chain_{c}": await chain_rate(session, totals[c], c) for c in CONCURRENCY}

        with workers:
            try:
                return bench.session(BACKEND, measure)
            except BaseException:
                for worker in workers.workers:
                    bench.say(f"  --- log of worker {worker.name}:\n{worker.tail()}")
                raise
            finally:
                app.close()

    got: dict[str, Any] = {**chained(), **streaming()}
    for c in CONCURRENCY:
        got[f"flow_{c}_vs_chain"] = got[f"flow_{c}"] / got[f"chain_{c}"]
        bench.row(f"Celery chain per run, {c} at a time", f"{got[f'chain_{c}']:>9,.0f} runs/s", "baseline")
        bench.row(
            f"flow runs on Celery, {c} at a time",
            f"{got[f'flow_{c}']:>9,.0f} runs/s",
            f"{got[f'flow_{c}_vs_chain']:.2f}x chain",
            f"{totals[c]:,} runs",
        )
    bench.record(NAME, backend=BACKEND, runs=totals, **got)
    return got
