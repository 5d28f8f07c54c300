"""Worker heartbeats and leases: which processes are alive, and what becomes of
the work of one that is not.

Every process that attached a :class:`~datagraph.Supervisor` and created a
runtime beats every ``heartbeat_interval`` seconds, from each event loop it
runs: it scores itself in ``keys.WORKERS`` (a sorted set; score = unix time of
the beat) and describes itself in ``keys.worker(id)``, a hash with ``host``,
``pid``, ``executor``, ``started``, ``last_beat``, ``processors`` and
``queues`` (JSON lists), plus ``interval``, ``lease`` and ``running`` (JSON
list of the ``<run id>/<processor>`` it runs through a Celery task).  A worker
whose last beat is older than ``Settings.lease``, that is
``heartbeat_interval * (heartbeat_misses + 0.5)``, counts as dead.

Work lost with a worker is noticed in two places, so that a run fails
promptly whoever is watching it:

* a blocking stream reader whose read came back empty checks the processors
  that produce what it reads (:func:`check_on_idle_read`, installed as a
  ``streams.idle_hooks`` hook): the caller's ``stream()`` and every downstream
  processor watch their producers;
* every live process, on each beat, fails what the workers whose lease just
  expired were running (:func:`reap_dead_workers`), even if nobody reads.

The same checks fail a processor that was dispatched but that no worker
started before its ``start_by`` deadline (``dispatch_timeout``), so a flow
that needs more pool slots than the workers have fails, naming the processor,
instead of waiting silently.

A processor failed here ends its outputs with a failure marker, exactly as if
it had raised, so its readers raise :class:`~datagraph.exceptions.ProcessorFailed`
naming the processor and the worker; the run is failed with
:func:`~datagraph.store.scripts.finish_run`.  Nothing is re-dispatched: a
processor restarted elsewhere would write again the values its first run
already wrote.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from glide import GlideError as GlideBaseError

from . import streams
from .exceptions import StoreError
from .plan import Plan
from .processor import registry
from .store import keys, scripts
from .store.client import exec_batch, new_batch
from .store.client import reply_text as _text

if TYPE_CHECKING:
    from .context import Context
    from .runtime import Runtime

__all__ = [
    "Failure",
    "WorkerInfo",
    "beat",
    "check_on_idle_read",
    "check_processors",
    "fail_processors",
    "live_workers",
    "mark_stopped",
    "reap_dead_workers",
    "running",
    "start_heartbeat",
]

log = logging.getLogger("datagraph.liveness")

#: Stats-hash states this module reads and writes (the runner writes the others).
DISPATCHED = "dispatched"
RUNNING = "running"

# KEYS[1] the run's stats hash, KEYS[2..] the processor's output streams.
# ARGV[1] processor, ARGV[2] the state it must still be in, ARGV[3] the worker
# it must still be on ('' for any), ARGV[4] the signed failure marker,
# ARGV[5] the end time.  Fails the processor once: returns 1 if it did.
_FAIL_PROCESSOR = """
local state = redis.call('HGET', KEYS[1], 'state:' .. ARGV[1])
if state ~= ARGV[2] then return 0 end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'worker:' .. ARGV[1]) ~= ARGV[3] then
  return 0
end
redis.call('HSET', KEYS[1], 'state:' .. ARGV[1], 'failed', 'ended:' .. ARGV[1], ARGV[5])
for i = 2, #KEYS do redis.call('XADD', KEYS[i], '*', ARGV[6], ARGV[4]) end
return 1
"""


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a processor is failed from outside: its worker died, or none started it."""

    processor: str
    #: ``WorkerLost``, ``DispatchTimeout`` or ``WritesLost`` (the error type readers see).
    kind: str
    message: str
    #: The worker it ran on, if it ever started.
    worker: str | None
    #: The state the processor must still be in for the failure to apply.
    state: str


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A live worker as its heartbeat describes it."""

    id: str
    executor: str
    processors: tuple[str, ...]
    queues: tuple[str, ...]
    last_beat: float


@dataclass
class _Local:
    """What this process knows about one of its worker ids."""

    started: float = field(default_factory=time.time)
    running: set[str] = field(default_factory=set)


#: Worker id -> local state (a forked child gets a new worker id, hence a new entry).
_local: dict[str, _Local] = {}


def _local_state(worker_id: str) -> _Local:
    state = _local.get(worker_id)
    if state is None:
        state = _local[worker_id] = _Local()
    return state




# -- heartbeats ----------------------------------------------------------------


async def start_heartbeat(supervisor: Context, runtime: Runtime) -> None:
    """Runtime hook: beat (and reap dead workers) from this event loop while it runs."""
    runtime.host.start_soon(_heartbeat, supervisor, runtime, name="datagraph-heartbeat")


async def _heartbeat(supervisor: Context, runtime: Runtime) -> None:
    failing = False
    while True:
        try:
            await beat(supervisor, runtime)
            await reap_dead_workers(runtime)
        except Exception as exc:  # a beat must never end the loop's host task group
            if not failing:
                log.warning("worker %s could not publish its heartbeat: %s", runtime.worker_id, exc)
            failing = True
        else:
            if failing:
                log.warning("worker %s publishes its heartbeat again", runtime.worker_id)
            failing = False
        await anyio.sleep(runtime.settings.heartbeat_interval)


def _describe(supervisor: Context, runtime: Runtime, local: _Local) -> list[str]:
    executor = supervisor.executor
    consumed = getattr(executor, "consumed_queues", None)
    queues = list(consumed()) if callable(consumed) else []
    implemented = sorted(p.name for p in registry.all() if p.implementation is not None)
    settings = runtime.settings
    return [
        "host", socket.gethostname(),
        "pid", str(os.getpid()),
        "executor", executor.kind,
        "started", repr(local.started),
        "processors", json.dumps(implemented),
        "queues", json.dumps(queues),
        "running", json.dumps(sorted(local.running)),
        "interval", repr(settings.heartbeat_interval),
        "lease", repr(settings.lease),
    ]


async def beat(supervisor: Context, runtime: Runtime) -> None:
    """Publish one heartbeat of this process (as ``runtime.worker_id``)."""
    worker_id = runtime.worker_id
    settings = runtime.settings
    key = keys.worker(worker_id)
    local = _local_state(worker_id)
    now = repr(time.time())
    batch = new_batch(runtime.client)
    batch.custom_command(["ZADD", keys.WORKERS, now, worker_id])
    batch.custom_command(["HSET", key, "last_beat", now, *_describe(supervisor, runtime, local)])
    # A worker that beats again after being declared dead is alive again.
    batch.custom_command(["HDEL", key, "reaped", "stopped"])
    batch.custom_command(["EXPIRE", key, str(math.ceil(settings.worker_retention + settings.lease))])
    try:
        await exec_batch(runtime.client, batch, raise_on_error=True)
    except GlideBaseError as exc:
        raise StoreError(f"could not publish the heartbeat of worker {worker_id}: {exc}") from exc


async def mark_stopped(runtime: Runtime) -> None:
    """Record that this worker stopped on purpose (it stays listed until purged)."""
    local = _local_state(runtime.worker_id)
    local.running.clear()
    try:
        await runtime.client.custom_command(
            ["HSET", keys.worker(runtime.worker_id), "stopped", repr(time.time()), "running", "[]"]
        )
    except GlideBaseError as exc:
        log.debug("could not mark worker %s stopped: %s", runtime.worker_id, exc)


@asynccontextmanager
async def running(runtime: Runtime, run_id: str, processor: str) -> AsyncIterator[None]:
    """Advertise ``processor`` of ``run_id`` as running here (``running`` field) while inside."""
    local = _local_state(runtime.worker_id)
    item = f"{run_id}/{processor}"
    local.running.add(item)
    await _publish_running(runtime, local)
    try:
        yield
    finally:
        local.running.discard(item)
        with anyio.CancelScope(shield=True):
            await _publish_running(runtime, local)


async def _publish_running(runtime: Runtime, local: _Local) -> None:
    try:
        await runtime.client.custom_command(
            ["HSET", keys.worker(runtime.worker_id), "running", json.dumps(sorted(local.running))]
        )
    except GlideBaseError as exc:
        log.debug("could not publish what worker %s runs: %s", runtime.worker_id, exc)


async def live_workers(runtime: Runtime) -> list[WorkerInfo]:
    """Workers whose last beat is within the lease, as their heartbeats describe them."""
    since = time.time() - runtime.settings.lease
    try:
        reply = await runtime.client.custom_command(
            ["ZRANGEBYSCORE", keys.WORKERS, repr(since), "+inf", "WITHSCORES"]
        )
        beats = _pairs(reply)
        if not beats:
            return []
        batch = new_batch(runtime.client)
        for worker_id in beats:
            batch.custom_command(["HMGET", keys.worker(worker_id), "executor", "processors", "queues"])
        described = await exec_batch(runtime.client, batch, raise_on_error=True)
    except GlideBaseError as exc:
        raise StoreError(f"could not read the worker heartbeats: {exc}") from exc
    workers = []
    for (worker_id, last_beat), (executor, processors, queues) in zip(
        beats.items(), described or [], strict=True
    ):
        if processors is None:
            continue  # the hash expired or was purged between the two reads
        workers.append(WorkerInfo(
            id=worker_id,
            executor=_text(executor) if executor is not None else "",
            processors=tuple(json.loads(processors)),
            queues=tuple(json.loads(queues)) if queues is not None else (),
            last_beat=last_beat,
        ))
    return workers


def _pairs(reply: Any) -> dict[str, float]:
    """``ZRANGE ... WITHSCORES`` as ``{member: score}`` (RESP2 flat list or RESP3 pairs)."""
    if not reply:
        return {}
    if isinstance(reply, dict):
        return {_text(k): float(v) for k, v in reply.items()}
    if isinstance(reply[0], list | tuple):
        return {_text(k): float(v) for k, v in reply}
    return {_text(reply[i]): float(reply[i + 1]) for i in range(0, len(reply), 2)}


# -- noticing lost work ----------------------------------------------------------


async def check_processors(
    runtime: Runtime, run_id: str, processors: Collection[str]
) -> list[Failure]:
    """Fail those of ``processors`` whose worker died or that nobody started in time.

    Returns the failures applied (empty when all is well).
    """
    names = list(dict.fromkeys(processors))
    if not names:
        return []
    fields = []
    for name in names:
        fields += [f"state:{name}", f"worker:{name}", f"dispatched:{name}", f"start_by:{name}"]
    client = runtime.client
    try:
        reply = await client.custom_command(["HMGET", keys.stats(run_id), *fields])
        now = time.time()
        failures: list[Failure] = []
        suspects: dict[str, str] = {}
        for i, name in enumerate(names):
            state, worker, dispatched, start_by = reply[4 * i : 4 * i + 4]
            if state == DISPATCHED.encode() and start_by is not None and now > float(start_by):
                waited = now - float(dispatched) if dispatched is not None else math.nan
                failures.append(Failure(
                    processor=name,
                    kind="DispatchTimeout",
                    message=(
                        f"no worker started processor {name!r} within the dispatch timeout "
                        f"(waited {waited:.1f}s): every worker that implements it is busy or "
                        "gone. A run needs a free pool slot for each of its processors at "
                        "once; add workers or raise --concurrency (see 'Scaling out')"
                    ),
                    worker=None,
                    state=DISPATCHED,
                ))
            elif state == RUNNING.encode() and worker is not None:
                if _text(worker) == runtime.worker_id:
                    continue  # this very process: alive, however late its own beat is
                suspects[name] = _text(worker)
        if suspects:
            ids = list(dict.fromkeys(suspects.values()))
            batch = new_batch(client)
            batch.custom_command(["ZMSCORE", keys.WORKERS, *ids])
            for worker_id in ids:
                batch.custom_command(["HMGET", keys.worker(worker_id), "executor", "running"])
            scores, *described = await exec_batch(client, batch, raise_on_error=True)
            last = {w: float(s) for w, s in zip(ids, scores, strict=True) if s is not None}
            runs_now = {w: _advertised(d) for w, d in zip(ids, described, strict=True)}
            lease = runtime.settings.lease
            for name, worker_id in suspects.items():
                beat_at = last.get(worker_id)
                advertised = runs_now.get(worker_id)
                gone = advertised is not None and f"{run_id}/{name}" not in advertised
                absent = _absent_since.setdefault((run_id, name), now) if gone else None
                if not gone:
                    _absent_since.pop((run_id, name), None)
                alive = beat_at is not None and now - beat_at <= lease
                if alive and absent is not None and now - absent > lease:
                    # Alive, but it no longer runs the processor, whose end is not in the
                    # store: its last writes were lost (a failover that lost acknowledged
                    # writes, or keys evicted). Its readers would otherwise wait idle_timeout.
                    failures.append(Failure(
                        processor=name,
                        kind="WritesLost",
                        message=(
                            f"worker {worker_id} finished processor {name!r} more than {lease:g}s ago, "
                            "but the store has not kept its last writes (its end is missing: a "
                            "failover lost acknowledged writes, or keys were evicted); its output "
                            "is incomplete"
                        ),
                        worker=worker_id,
                        state=RUNNING,
                    ))
                # A worker that never beat yet is starting: only a stale beat is a death.
                elif beat_at is not None and now - beat_at > lease:
                    failures.append(Failure(
                        processor=name,
                        kind="WorkerLost",
                        message=(
                            f"worker {worker_id} running processor {name!r} stopped "
                            f"heart-beating {now - beat_at:.1f}s ago (lease {lease:g}s); "
                            "it was killed or lost its connection to the store"
                        ),
                        worker=worker_id,
                        state=RUNNING,
                    ))
    except GlideBaseError as exc:
        raise StoreError(f"could not check the processors of run {run_id}: {exc}") from exc
    if not failures:
        return []
    return await fail_processors(runtime, run_id, failures)


async def fail_processors(
    runtime: Runtime, run_id: str, failures: Sequence[Failure]
) -> list[Failure]:
    """End each failed processor's outputs with a failure marker; fail the run.

    A failure applies only if its processor is still in ``failure.state`` (and
    on ``failure.worker``), so concurrent checkers fail a processor once.
    """
    client = runtime.client
    try:
        raw = await client.custom_command(["HGET", keys.run(run_id), "plan"])
        if raw is None:
            return []  # the run expired
        plan = Plan.from_json(raw)
        applied: list[Failure] = []
        for failure in failures:
            name = failure.processor
            try:
                outputs = plan.processor(name)["outputs"]
            except KeyError:
                continue
            marker = runtime.codec.encode_marker({
                "status": "failed", "processor": name, "type": failure.kind,
                "message": failure.message, "traceback": "", "worker": failure.worker,
            })
            stream_keys = [keys.stats(run_id), *(keys.stream(run_id, io) for io in outputs)]
            changed = await client.custom_command([
                "EVAL", _FAIL_PROCESSOR, str(len(stream_keys)), *stream_keys,
                name, failure.state, failure.worker or "", marker, repr(time.time()),
                streams.MARKER,
            ])
            if changed:
                applied.append(failure)
                log.warning("run %s: processor %r failed: %s", run_id, name, failure.message)
    except GlideBaseError as exc:
        raise StoreError(f"could not record the failure of run {run_id}: {exc}") from exc
    if applied:
        first = applied[0]
        await scripts.finish_run(runtime, plan, "failed", error={
            "processor": first.processor, "type": first.kind, "message": first.message,
            "traceback": "", "worker": first.worker,
        })
    return applied


#: (run id, processor) -> when a live worker was first seen no longer running it while
#: the store still had it running (see check_processors); bounded with _idle_checked.
_absent_since: dict[tuple[str, str], float] = {}


def _advertised(described: Any) -> set[str] | None:
    """What a worker's hash says it runs (``run/processor``), or None when it does not say.

    Workers that run processors through ``run_dispatched`` (Celery, Process, a
    documented third-party executor) publish them; a LocalExecutor process does
    not (its processors run where they were started, so nobody else reads them idle).
    """
    executor, raw = described or (None, None)
    if raw is None or _text(executor or b"") == "local":
        return None
    try:
        listed = json.loads(raw)
    except ValueError:
        return None
    return {str(item) for item in listed} if isinstance(listed, list) else None


#: (run id, processors) -> when this process last checked them from an idle read.
_idle_checked: dict[tuple[str, frozenset[str]], float] = {}


async def check_on_idle_read(
    runtime: Runtime, run_id: str, ios: Sequence[str], producers: Mapping[str, str]
) -> None:
    """Stream idle hook: a read came back empty, so check the producers of ``ios``.

    A failure found here is written as end markers, which the reader's next
    read returns; this hook itself never raises.
    """
    names = frozenset(producers[io] for io in ios if io in producers)
    if not names:
        return
    now = time.monotonic()
    key = (run_id, names)
    if now - _idle_checked.get(key, -math.inf) < min(1.0, runtime.settings.heartbeat_interval / 2):
        return
    if len(_idle_checked) > 1024:
        horizon = now - 60.0
        for old in [k for k, at in _idle_checked.items() if at < horizon]:
            del _idle_checked[old]
        for stale in [k for k, at in _absent_since.items() if at < horizon]:
            del _absent_since[stale]
    _idle_checked[key] = now
    try:
        await check_processors(runtime, run_id, names)
    except StoreError as exc:
        log.debug("run %s: could not check producers %s: %s", run_id, sorted(names), exc)


#: Dead worker id -> the last-beat score it had when this process handled it.
_reaped: dict[str, float] = {}


async def reap_dead_workers(runtime: Runtime) -> int:
    """Fail what workers whose lease expired were running; returns how many were reaped.

    Each dead worker is claimed once (``reaped`` field), so one live process
    handles it; workers gone for longer than ``worker_retention`` are ignored.
    """
    settings = runtime.settings
    now = time.time()
    client = runtime.client
    try:
        reply = await client.custom_command([
            "ZRANGEBYSCORE", keys.WORKERS, repr(now - settings.worker_retention),
            repr(now - settings.lease), "WITHSCORES",
        ])
        stale = _pairs(reply)
        for gone in [w for w in _reaped if w not in stale]:
            del _reaped[gone]
        dead = {w: s for w, s in stale.items() if _reaped.get(w) != s}
        if not dead:
            return 0
        batch = new_batch(client)
        for worker_id in dead:
            batch.custom_command(["HMGET", keys.worker(worker_id), "running", "reaped"])
        described = await exec_batch(client, batch, raise_on_error=True)
        reaped = 0
        for (worker_id, score), (raw_running, claimed) in zip(dead.items(), described, strict=True):
            _reaped[worker_id] = score
            work = json.loads(raw_running) if raw_running else []
            if claimed is not None or not work:
                continue
            won = await client.custom_command(
                ["HSETNX", keys.worker(worker_id), "reaped", runtime.worker_id]
            )
            if not won:
                continue
            reaped += 1
            by_run: dict[str, list[str]] = {}
            for item in work:
                run_id, _, name = str(item).rpartition("/")
                by_run.setdefault(run_id, []).append(name)
            for run_id, names in by_run.items():
                await check_processors(runtime, run_id, names)
    except GlideBaseError as exc:
        raise StoreError(f"could not look for dead workers: {exc}") from exc
    return reaped


if check_on_idle_read not in streams.idle_hooks:
    streams.idle_hooks.append(check_on_idle_read)
