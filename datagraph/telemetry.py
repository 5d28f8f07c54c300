"""The read side of telemetry: typed snapshots of what workers publish.

::

    async with await Telemetry.connect("redis://localhost:6379/0") as telemetry:
        for summary in await telemetry.runs(state="running"):
            run = await telemetry.run(summary.id)
            for edge in run.edges:
                print(edge.io, edge.source, edge.target, edge.backlog)

What is read, and who writes it:

- registrations (``registration.py``): processors with typed inputs and
  outputs, and which workers implement them;
- heartbeats (``liveness.py``): one hash per worker and a sorted set by last
  beat; a worker is online while its last beat is within ``Settings.lease``,
  and forgotten ``Settings.worker_retention`` seconds after it went quiet;
- runs (the supervisor and the runner): the run record, the ``stats`` hash
  (values written per IO, state, times and busy / idle / backpressured
  seconds per processor) and the positions readers publish with each fetch.

Every call costs a constant number of pipelined round trips: one for
:meth:`Telemetry.run` and :meth:`Telemetry.run_snapshots` (any number of
runs), two for :meth:`Telemetry.processors` and :meth:`Telemetry.workers`,
two per page of the run index for :meth:`Telemetry.runs`; plus one when
something stale is cleaned up on the way (workers past retention, expired
runs left in the index).

The snapshot classes live in :mod:`datagraph.snapshots` and are re-exported here.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from glide import GlideError as GlideBaseError

from .exceptions import ConfigError, StoreError
from .history import (
    COARSE_SECONDS,
    INTERVAL,
    Bottleneck,
    EdgeHistory,
    HistoryRecord,
    ProcessorHistory,
    RunHistory,
    build_history,
    merge_samples,
    parse_entries,
)
from .settings import Settings
from .snapshots import (
    INPUT,
    OUTPUT,
    RUN_STATES,
    SUMMARY_FIELDS,
    EdgeSnapshot,
    InputSummary,
    PortInfo,
    ProcessorInfo,
    ProcessorState,
    RunFailure,
    RunSnapshot,
    RunSummary,
    Seconds,
    StatusSnapshot,
    WorkerSnapshot,
    decode_hash,
    loads,
    processor_info,
    processor_seconds,
    run_snapshot,
    run_summary,
    scored,
    text,
    to_float,
    to_int,
    worker_lease,
    worker_snapshot,
)
from .store import keys
from .store.client import Store, exec_batch, new_batch

if TYPE_CHECKING:
    from .supervisor import Supervisor

__all__ = [
    "INPUT",
    "OUTPUT",
    "RUN_STATES",
    "Bottleneck",
    "EdgeHistory",
    "EdgeSnapshot",
    "InputSummary",
    "PortInfo",
    "ProcessorInfo",
    "ProcessorHistory",
    "ProcessorState",
    "RunFailure",
    "RunHistory",
    "RunSnapshot",
    "RunSummary",
    "StatusSnapshot",
    "Telemetry",
    "WorkerSnapshot",
]

#: Runs whose counters are remembered between snapshots.
_SAMPLED_RUNS = 1024
#: Samples of written counts closer together than this (seconds) make no rate.
_MIN_WINDOW = 0.2
#: Entries of the run index read per round trip by ``runs()``.
_PAGE = 200


def _use_namespace(namespace: str) -> None:
    """Read ``namespace``: the process's one namespace, unless an attached supervisor uses another."""
    if namespace == keys.namespace():
        return
    from .supervisor import Supervisor

    if Supervisor._current is not None:
        raise ConfigError(
            f"cannot read namespace {namespace!r}: this process's supervisor uses namespace "
            f"{keys.namespace()!r}, and one process reads and writes one namespace"
        )
    keys.use_namespace(namespace)


class Telemetry:
    """Reads telemetry from the store and returns typed snapshots.

    Build it on a glide client (``Telemetry(client, settings)``), on the
    attached supervisor (``await Telemetry.from_supervisor(supervisor)``,
    sharing its connection on the current event loop), or on a connection of
    its own (``await Telemetry.connect(url)``, closed by ``aclose()`` or
    ``async with``).  ``settings`` gives the lease and the retention of
    workers (default: ``Settings.from_env()``).  Keys are read in the
    process's namespace (``keys.namespace()``); ``connect()`` selects
    ``settings.namespace`` (``DATAGRAPH_NAMESPACE``).

    A Telemetry object remembers the counters of each run's last snapshot:
    polling a run (say once a second) yields the busy / idle / backpressured
    split of recent time rather than of the whole run.
    """

    def __init__(self, client: Store, settings: Settings | None = None) -> None:
        self.client = client
        self.settings = settings if settings is not None else Settings.from_env()
        self._owns_client = False
        self._samples = _Samples()

    @classmethod
    async def connect(
        cls, redis_config: Mapping[str, Any] | str | None = None, settings: Settings | None = None
    ) -> Telemetry:
        """Connect to a URL, a ``redis_config`` mapping, or ``DATAGRAPH_REDIS_URL``."""
        from .store.client import connect, parse_redis_config

        if redis_config is None:
            url = os.environ.get("DATAGRAPH_REDIS_URL")
            if not url:
                raise ConfigError(
                    "no store to read telemetry from: pass a URL such as "
                    "'redis://localhost:6379/0' or set DATAGRAPH_REDIS_URL"
                )
            redis_config = url
        if isinstance(redis_config, str):
            redis_config = {"url": redis_config}
        settings = settings if settings is not None else Settings.from_env()
        _use_namespace(settings.namespace)
        client = await connect(
            parse_redis_config(redis_config),
            request_timeout=settings.request_timeout,
            connect_timeout=settings.connect_timeout,
        )
        telemetry = cls(client, settings)
        telemetry._owns_client = True
        return telemetry

    @classmethod
    async def from_supervisor(cls, supervisor: Supervisor) -> Telemetry:
        """Read through ``supervisor``'s connection on the current event loop."""
        runtime = await supervisor.runtime()
        return cls(runtime.client, supervisor.settings)

    async def aclose(self) -> None:
        """Close the connection if ``connect()`` opened it."""
        if self._owns_client:
            self._owns_client = False
            with contextlib.suppress(GlideBaseError):  # it is going away either way
                await self.client.close()

    async def __aenter__(self) -> Telemetry:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _exec(self, commands: Sequence[list[str]], doing: str) -> list[Any]:
        if not commands:
            return []
        batch = new_batch(self.client)
        for command in commands:
            batch.custom_command(command)
        try:
            result = await exec_batch(self.client, batch, raise_on_error=True)
        except GlideBaseError as exc:
            raise StoreError(f"could not read {doing} from Valkey: {exc}") from exc
        return list(result or [])

    async def _registry(self) -> tuple[dict[str, Any], dict[str, float], dict[str, float]]:
        registrations, implementers, beats = await self._exec(
            [
                ["HGETALL", keys.PROCESSORS],
                ["HGETALL", keys.IMPLEMENTERS],
                ["ZRANGE", keys.WORKERS, "0", "-1", "WITHSCORES"],
            ],
            "processor registrations",
        )
        records = {k: loads(v) for k, v in decode_hash(registrations).items()}
        implemented = {k: to_float(v) or 0.0 for k, v in decode_hash(implementers).items()}
        return records, implemented, dict(scored(beats))

    # -- processors and workers ------------------------------------------------

    async def processors(self) -> list[ProcessorInfo]:
        """Every registered processor, sorted by name."""
        now = time.time()
        records, implemented, last_beat = await self._registry()
        purge = _purge_plan(now, self.settings, last_beat, implemented, records)
        await self._exec(purge.commands, "stale registrations")
        online = await self._online(
            {w: at for w, at in last_beat.items() if w not in purge.workers}, now
        )
        workers_of: dict[str, list[str]] = {}
        for name_worker in sorted(implemented, key=implemented.__getitem__):
            if name_worker not in purge.implementers:
                name, worker = keys.split_implementer_field(name_worker)
                workers_of.setdefault(name, []).append(worker)
        infos = [
            processor_info(name, record, workers_of.get(name, []), online)
            for name, record in records.items()
            if name not in purge.processors and isinstance(record, Mapping)
        ]
        return sorted(infos, key=lambda info: info.name)

    async def _online(self, last_beat: Mapping[str, float], now: float) -> set[str]:
        """The workers among ``last_beat`` that are online, each by its own lease."""
        ids = list(last_beat)
        described = await self._exec(
            [["HMGET", keys.worker(w), "lease", "stopped"] for w in ids], "worker heartbeats"
        )
        online = set()
        for worker, (lease, stopped) in zip(ids, described, strict=True):
            fields = {"lease": text(lease)} if lease is not None else {}
            if stopped is None and now - last_beat[worker] <= worker_lease(fields, self.settings.lease):
                online.add(worker)
        return online

    async def processor(self, name: str) -> ProcessorInfo | None:
        """One registered processor, or None."""
        for info in await self.processors():
            if info.name == name:
                return info
        return None

    async def workers(self) -> list[WorkerSnapshot]:
        """Workers heard from within the retention period, most recent beat first."""
        now = time.time()
        (beats,) = await self._exec(
            [["ZRANGE", keys.WORKERS, "0", "-1", "WITHSCORES"]], "worker heartbeats"
        )
        cutoff = now - self.settings.worker_retention
        everyone = sorted(scored(beats), key=lambda item: -item[1])
        kept = [(worker, at) for worker, at in everyone if at >= cutoff]
        if len(kept) < len(everyone):
            await self.purge(now)
        hashes = await self._exec([["HGETALL", keys.worker(w)] for w, _ in kept], "workers")
        return [
            worker_snapshot(worker, at, decode_hash(raw), now, self.settings.lease)
            for (worker, at), raw in zip(kept, hashes, strict=True)
        ]

    async def purge(self, now: float | None = None) -> list[str]:
        """Forget workers silent for longer than ``worker_retention``; returns their ids.

        Their registrations go with them, and a processor no worker implements
        any more is dropped once its registration is that old too.
        """
        now = time.time() if now is None else now
        records, implemented, last_beat = await self._registry()
        purge = _purge_plan(now, self.settings, last_beat, implemented, records)
        await self._exec(purge.commands, "stale workers")
        return sorted(purge.workers)

    # -- runs ------------------------------------------------------------------

    async def runs(
        self,
        *,
        state: str | Iterable[str] | None = None,
        flow: str | None = None,
        limit: int = 50,
        before: float | None = None,
    ) -> list[RunSummary]:
        """Recent runs, newest first.

        ``state`` keeps the runs in that state (or those states), ``flow`` the
        runs of the flow of that name; ``before`` pages back: pass the
        ``started`` of the last run of the previous page.
        """
        wanted = {state} if isinstance(state, str) else set(state) if state is not None else None
        if wanted is not None and not wanted <= set(RUN_STATES):
            unknown = sorted(wanted - set(RUN_STATES))
            raise ValueError(f"unknown run state(s) {unknown}; the states are {list(RUN_STATES)}")
        now = time.time()
        found: list[RunSummary] = []
        upper = f"({before!r}" if before is not None else "+inf"
        seen: set[str] = set()
        while len(found) < limit:
            # Paged by start time, not by offset: new runs keep arriving at the top.
            (page,) = await self._exec(
                [["ZRANGE", keys.RUNS, upper, "-inf", "BYSCORE", "REV", "LIMIT", "0", str(_PAGE),
                  "WITHSCORES"]],
                "the run index",
            )
            entries = scored(page)
            ids = [run_id for run_id, _ in entries if run_id not in seen]
            if not ids:
                break
            seen.update(ids)
            records = await self._exec(
                [["HMGET", keys.run(run_id), *SUMMARY_FIELDS] for run_id in ids], "runs"
            )
            expired = []
            for run_id, values in zip(ids, records, strict=True):
                record = {
                    name: text(value)
                    for name, value in zip(SUMMARY_FIELDS, values or (), strict=False)
                    if value is not None
                }
                if "state" not in record:
                    expired.append(run_id)
                    continue
                plan = loads(record.get("plan"))
                summary = run_summary(run_id, record, plan if isinstance(plan, Mapping) else {}, now)
                if (wanted is None or summary.state in wanted) and flow in (None, summary.flow):
                    found.append(summary)
            if expired:
                await self._exec([["ZREM", keys.RUNS, *expired]], "the run index")
            if len(entries) < _PAGE:
                break
            # Inclusive, so runs sharing the boundary's start time are not skipped.
            upper = repr(entries[-1][1])
        return found[:limit]

    async def run(self, run_id: str) -> RunSnapshot | None:
        """One run with its edges and processor states; None when unknown or expired."""
        (snapshot,) = await self.run_snapshots([run_id])
        return snapshot

    async def run_snapshots(self, run_ids: Sequence[str]) -> list[RunSnapshot | None]:
        """Snapshots of several runs in one round trip (None for unknown ones)."""
        if not run_ids:
            return []
        now = time.time()
        commands = [["ZRANGE", keys.WORKERS, repr(now - self.settings.lease), "+inf", "BYSCORE"]]
        for run_id in run_ids:
            commands += [
                ["HGETALL", keys.run(run_id)],
                ["HGETALL", keys.stats(run_id)],
                ["HGETALL", keys.pos(run_id)],
            ]
        result = await self._exec(commands, "runs")
        online = {text(worker) for worker in result[0] or ()}
        snapshots: list[RunSnapshot | None] = []
        for index, run_id in enumerate(run_ids):
            record, stats, pos = (decode_hash(r) for r in result[1 + 3 * index : 4 + 3 * index])
            if "state" not in record:
                snapshots.append(None)
                continue
            windows, rates = self._samples.observe(run_id, now, stats)
            snapshots.append(run_snapshot(
                run_id, record, stats, pos, online=online, now=now, windows=windows, rates=rates
            ))
        return snapshots

    async def history(self, run_id: str, since: float | None = None) -> RunHistory | None:
        """How the run's edges and processors moved, and its bottleneck; None when unknown.

        ``since`` (unix seconds) keeps only later samples; the bottleneck is
        judged on the samples read (the whole run when ``since`` is None).
        """
        (history,) = await self.histories([run_id], since=since)
        return history

    async def histories(
        self, run_ids: Sequence[str], since: float | None = None
    ) -> list[RunHistory | None]:
        """The histories of several runs in one round trip (None for unknown ones)."""
        records = await self.history_records(run_ids, since=since)
        return [
            build_history(run_id, r.plan, r.state, r.samples, since=since) if r is not None else None
            for run_id, r in zip(run_ids, records, strict=True)
        ]

    async def history_records(
        self, run_ids: Sequence[str], *, since: float | None = None, after: float | None = None
    ) -> list[HistoryRecord | None]:
        """The raw samples of several runs, for callers that keep them between reads.

        ``since`` reads from a little before that time (a sample from before it
        gives the first rates); ``after`` reads only samples later than that
        time, from the one-second stream.  None for unknown runs.
        """
        if not run_ids:
            return []
        if after is not None:
            fine_from, coarse_from = f"({int(after * 1000) + 1}", None
        elif since is not None:
            fine_from = str(int((since - 2 * INTERVAL) * 1000))
            coarse_from = str(int((since - 2 * COARSE_SECONDS) * 1000))
        else:
            fine_from, coarse_from = "-", "-"
        commands = []
        for run_id in run_ids:
            commands.append(["HMGET", keys.run(run_id), "state", "plan"])
            commands.append(["LRANGE", keys.history_names(run_id), "0", "-1"])
            if coarse_from is not None:
                commands.append(["XRANGE", keys.history_coarse(run_id), coarse_from, "+"])
            commands.append(["XRANGE", keys.history(run_id), fine_from, "+"])
        result = await self._exec(commands, "run history")
        step = 3 if coarse_from is None else 4
        records: list[HistoryRecord | None] = []
        for index in range(len(run_ids)):
            (state, plan), raw_names, *streams = result[step * index : step * index + step]
            if state is None:
                records.append(None)
                continue
            names = [text(name) for name in raw_names or ()]
            coarse = parse_entries(streams[0] if coarse_from is not None else None, names)
            parsed = loads(plan)
            records.append(HistoryRecord(
                state=text(state),
                plan=parsed if isinstance(parsed, Mapping) else {},
                samples=merge_samples(coarse, parse_entries(streams[-1], names)),
            ))
        return records

    async def status(
        self, *, limit: int = 10, state: str | Iterable[str] | None = None
    ) -> StatusSnapshot:
        """Processors, workers and the ``limit`` most recent runs, with their edges."""
        processors = await self.processors()
        workers = await self.workers()
        summaries = await self.runs(state=state, limit=limit)
        runs = await self.run_snapshots([summary.id for summary in summaries])
        return StatusSnapshot(
            processors=tuple(processors),
            workers=tuple(workers),
            runs=tuple(run for run in runs if run is not None),
        )


# -- windows between snapshots ---------------------------------------------------


@dataclass
class _RunSample:
    at: float
    written: dict[str, int]
    #: Per processor: the previous and the latest distinct published seconds.
    seconds: dict[str, tuple[Seconds | None, Seconds]]


class _Samples:
    """The counters of each run's previous snapshot (bounded, least recent dropped)."""

    def __init__(self) -> None:
        self._runs: OrderedDict[str, _RunSample] = OrderedDict()

    def observe(
        self, run_id: str, now: float, stats: Mapping[str, str]
    ) -> tuple[dict[str, Seconds], dict[str, float] | None]:
        """Record a snapshot's counters; return recent seconds per processor and rates per IO.

        A processor's recent seconds are the difference between the last two
        values it published (writers publish about twice a second), so they do
        not depend on how often the run is polled.
        """
        written = {k[8:]: to_int(v) for k, v in stats.items() if k.startswith("written:")}
        names = {k.partition(":")[2] for k in stats if k.startswith("busy:")}
        previous = self._runs.pop(run_id, None)
        seconds: dict[str, tuple[Seconds | None, Seconds]] = {}
        windows: dict[str, Seconds] = {}
        for name in names:
            latest = processor_seconds(stats, name)
            before, last = previous.seconds.get(name, (None, latest)) if previous else (None, latest)
            if last != latest:
                before, last = last, latest
            seconds[name] = (before, last)
            if before is not None:
                windows[name] = (last[0] - before[0], last[1] - before[1], last[2] - before[2])
        rates = None
        sample = _RunSample(now, written, seconds)
        if previous is not None and now - previous.at < _MIN_WINDOW:
            sample.at, sample.written = previous.at, previous.written
        elif previous is not None:
            elapsed = now - previous.at
            rates = {io: (n - previous.written.get(io, 0)) / elapsed for io, n in written.items()}
        self._runs[run_id] = sample
        while len(self._runs) > _SAMPLED_RUNS:
            self._runs.popitem(last=False)
        return windows, rates


# -- forgetting workers ------------------------------------------------------------


@dataclass
class _Purge:
    workers: set[str] = field(default_factory=set)
    implementers: set[str] = field(default_factory=set)
    processors: set[str] = field(default_factory=set)
    commands: list[list[str]] = field(default_factory=list)


def _purge_plan(
    now: float,
    settings: Settings,
    last_beat: Mapping[str, float],
    implementers: Mapping[str, float],
    registrations: Mapping[str, Any],
) -> _Purge:
    """What to forget: workers silent past retention, and what only they implemented.

    An implementer that never heart-beat counts from when it registered.
    """
    cutoff = now - settings.worker_retention
    purge = _Purge(workers={w for w, at in last_beat.items() if at < cutoff})
    for name_worker, registered in implementers.items():
        _, worker = keys.split_implementer_field(name_worker)
        if worker in purge.workers or (worker not in last_beat and registered < cutoff):
            purge.implementers.add(name_worker)
    implemented = {
        keys.split_implementer_field(f)[0] for f in implementers if f not in purge.implementers
    }
    for name, record in registrations.items():
        updated = to_float(record.get("updated")) if isinstance(record, Mapping) else None
        if name not in implemented and (updated is None or updated < cutoff):
            purge.processors.add(name)
    if purge.workers:
        # By score, so that a worker beating again meanwhile is kept.
        purge.commands.append(["ZREMRANGEBYSCORE", keys.WORKERS, "-inf", f"({cutoff!r}"])
        # One DEL per key: on a cluster each worker's hash lives in a slot of its own.
        purge.commands.extend(["DEL", keys.worker(w)] for w in sorted(purge.workers))
    if purge.implementers:
        purge.commands.append(["HDEL", keys.IMPLEMENTERS, *sorted(purge.implementers)])
    if purge.processors:
        purge.commands.append(["HDEL", keys.PROCESSORS, *sorted(purge.processors)])
    return purge
