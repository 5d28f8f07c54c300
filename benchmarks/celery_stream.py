"""celery: the pipeline on Celery workers, against a plain Celery chain.

Three set-ups, one after the other, each with real ``celery -A
benchmarks.celery_service worker`` processes (prefork pool, Valkey database 1
as the broker, the bench's Valkey as the store):

* one worker implementing both processors (``-c 2``: one pool slot per
  streaming processor);
* each processor on its own worker process (two workers, ``-c 1`` each);
* the baseline: plain Celery, no Datagraph: for every value a chain
  ``double.s(i) | done.s()`` (one task per value per stage) on one worker
  with ``-c 2`` and Celery's default prefetching, timed from the first
  ``apply_async`` until the last ``done`` task has counted its value (or
  until a time budget runs out: then it is the values done so far over the
  budget).

The streaming figures are timed like the pipeline scenario: from
``start_flow`` (in this process, which implements nothing) to the last value
the caller reads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from datagraph import Flow

from ._harness import SECRET, Bench, Session, fmt_rate, python_path
from .pipeline import flow_rate

NAME = "celery"
BACKEND = "asyncio"
SERVICE = "benchmarks.celery_service"


def unavailable() -> str | None:
    """Why the scenario cannot run here, or None."""
    try:
        import celery  # noqa: F401
        import redis  # noqa: F401  (Celery's redis transport, used with Valkey)

        from datagraph.executors.celery import CeleryExecutor  # noqa: F401

        from . import celery_service  # noqa: F401
    except ImportError as exc:
        return f"CeleryExecutor not available ({exc})"
    return None


class Worker:
    """One ``celery worker`` process of the benchmark service."""

    def __init__(
        self,
        bench: Bench,
        name: str,
        *,
        implement: str,
        concurrency: int,
        queues: str = "",
        streaming: bool = True,
    ) -> None:
        self.name = name
        store = bench.store
        self.env = {
            **os.environ,
            "PYTHONPATH": python_path(),
            "DATAGRAPH_REDIS_URL": store.url,
            "DATAGRAPH_SECRET": SECRET.decode(),
            "DATAGRAPH_BENCH_BROKER": broker_url(bench),
            "DATAGRAPH_BENCH_IMPLEMENT": implement,
        }
        self.argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            SERVICE,
            "worker",
            "-c",
            str(concurrency),
            "-n",
            f"{name}@%h",
            "-l",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        if streaming:
            # What a Datagraph service needs (a processor holds its slot while it
            # streams); the plain-Celery baseline keeps Celery's own defaults.
            self.argv += ["--prefetch-multiplier=1", "--disable-prefetch"]
        if queues:
            self.argv += ["-Q", queues]
        fd, path = tempfile.mkstemp(prefix=f"datagraph-bench-{name}-", suffix=".log")
        self.log = os.fdopen(fd, "wb")
        self.log_path = Path(path)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        self.process = None
        if process.poll() is None:
            process.terminate()  # warm shutdown
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                # Its prefork children are in its session: end them with it.
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        self.log.close()

    def tail(self, lines: int = 20) -> str:
        self.log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"celery worker {self.name} exited ({self.process.returncode}):\n{self.tail()}"
            )


def broker_url(bench: Bench) -> str:
    return f"redis://127.0.0.1:{bench.store.port}/1"


class Workers:
    def __init__(self, *workers: Worker) -> None:
        self.workers = workers

    def __enter__(self) -> Workers:
        for worker in self.workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self.workers:
            worker.stop()
        for worker in self.workers:
            worker.log_path.unlink(missing_ok=True)


def run(bench: Bench) -> dict[str, Any]:
    n = bench.pick(100_000, 300_000)
    n_chain = bench.pick(1_000, 3_000)
    # The baseline is slow (and slower still on a busy machine): it stops counting after this.
    chain_budget = bench.pick(20.0, 60.0)
    repeats = bench.pick(2, 3)
    bench.title(
        NAME,
        f"the pipeline on Celery workers (prefork) vs a task-per-value Celery chain; caller on {BACKEND}",
    )
    why = unavailable()
    if why is not None:
        bench.say(f"  skipped: {why}")
        bench.record(NAME, skipped=why)
        return {"skipped": why}

    from datagraph.executors import CeleryExecutor

    from .celery_service import CHAIN_QUEUE, DONE_KEY, PROCESSORS, make_app

    flow = Flow.from_processors(*PROCESSORS, name="bench-celery").resolve()
    names = ",".join(p.name for p in PROCESSORS)

    def streaming(workers: Workers) -> float:
        async def measure(session: Session) -> float:
            # The first run also waits (worker_grace) for the workers to come up.
            await flow_rate(session, flow, 2_000)
            for worker in workers.workers:
                worker.check_alive()
            return max([await flow_rate(session, flow, n) for _ in range(repeats)])

        executor = CeleryExecutor(make_app(broker_url(bench)), worker_grace=60)
        with workers:
            try:
                return bench.session(BACKEND, measure, executor=executor)
            except BaseException:
                for worker in workers.workers:
                    bench.say(f"  --- log of worker {worker.name}:\n{worker.tail()}")
                raise

    def chained(workers: Workers) -> tuple[float, int, float]:
        """(values/s, values done within the budget, seconds spent sending)"""
        app = make_app(broker_url(bench))
        from celery import chain

        sent: list[float] = []
        stop_sending = False

        def send(start: int, stop: int) -> None:
            began = time.perf_counter()
            for i in range(start, stop):
                if stop_sending:
                    break
                chain(
                    app.signature("bench.double", args=(i,), queue=CHAIN_QUEUE),
                    app.signature("bench.done", queue=CHAIN_QUEUE),
                ).apply_async()
            sent.append(time.perf_counter() - began)

        async def done_after(session: Session, count: int, budget: float) -> int:
            """Values done once ``count`` are done or ``budget`` seconds have passed."""
            deadline = time.monotonic() + budget
            while (done := int(await session.admin.custom_command(["GET", DONE_KEY]) or 0)) < count:
                if time.monotonic() > deadline:
                    return done
                for worker in workers.workers:
                    worker.check_alive()
                await anyio.sleep(0.005)
            return done

        async def measure(session: Session) -> tuple[float, int]:
            nonlocal stop_sending
            warm = 20
            await session.admin.custom_command(["DEL", DONE_KEY])
            await anyio.to_thread.run_sync(send, 0, warm)
            if await done_after(session, warm, 60) < warm:
                raise RuntimeError("the Celery chain worker did not process the warm-up chains in 60 s")
            await session.admin.custom_command(["DEL", DONE_KEY])
            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, send, 0, n_chain)
                done = await done_after(session, n_chain, chain_budget)
                elapsed = time.perf_counter() - started
                stop_sending = True
            return done / elapsed, done

        with workers:
            try:
                rate, done = bench.session(BACKEND, measure)
                return rate, done, sent[-1]
            except BaseException:
                for worker in workers.workers:
                    bench.say(f"  --- log of worker {worker.name}:\n{worker.tail()}")
                raise
            finally:
                app.close()

    one = streaming(Workers(Worker(bench, "both", implement=names, concurrency=2)))
    split = streaming(Workers(*(Worker(bench, p.name, implement=p.name, concurrency=1) for p in PROCESSORS)))
    chain_rate, chain_done, send_seconds = chained(
        Workers(Worker(bench, "chain", implement="", concurrency=2, queues=CHAIN_QUEUE, streaming=False))
    )

    got = {
        "n": n,
        "n_chain": n_chain,
        "chain_done": chain_done,
        "repeats": repeats,
        "backend": BACKEND,
        "one_worker": one,
        "worker_per_processor": split,
        "chain": chain_rate,
        "one_worker_vs_chain": one / chain_rate,
        "worker_per_processor_vs_chain": split / chain_rate,
        "best_vs_chain": max(one, split) / chain_rate,
    }
    got["chain_send_seconds"] = send_seconds
    bench.row(
        "Celery chain, task per value (baseline)",
        fmt_rate(chain_rate),
        "baseline",
        f"{chain_done:,} of {n_chain:,} values"
        + (f" (stopped at {chain_budget:.0f} s)" if chain_done < n_chain else "")
        + f", 2 tasks/value; sending took {send_seconds:.1f} s",
    )
    bench.row(
        "flow, all processors on one worker",
        fmt_rate(one),
        f"{got['one_worker_vs_chain']:.1f}x chain",
        f"N={n:,}",
    )
    bench.row(
        "flow, one worker per processor",
        fmt_rate(split),
        f"{got['worker_per_processor_vs_chain']:.1f}x chain",
    )
    bench.record(NAME, **got)
    return got
