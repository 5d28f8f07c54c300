"""Telemetry snapshots: frozen dataclasses, and how they are built from store replies.

:class:`~datagraph.telemetry.Telemetry` reads the store; the functions here
turn what it read into snapshots and never touch the store themselves.
Every snapshot has ``to_dict()`` (plain JSON data) and ``to_json()``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any

from .processor import Processor
from .retries import pending_retry
from .store import keys

__all__ = [
    "INPUT",
    "OUTPUT",
    "RUN_STATES",
    "EdgeSnapshot",
    "InputSummary",
    "PortInfo",
    "ProcessorInfo",
    "ProcessorState",
    "RunFailure",
    "RunSnapshot",
    "RunSummary",
    "StatusSnapshot",
    "WorkerSnapshot",
]

#: Source of an edge carrying a run input given to ``start_flow``.
INPUT = "(input)"
#: Target of an edge carrying a run output back to the caller of ``start_flow``.
OUTPUT = keys.OUTPUT_READER
#: The states a run can be in.
RUN_STATES = ("running", "succeeded", "failed", "cancelled")
#: A published ``rate:<io>`` older than this (seconds) no longer describes the edge.
RATE_FRESH = 2.0


class _Snapshot:
    def to_dict(self) -> dict[str, Any]:
        """The snapshot as plain JSON data."""
        data: dict[str, Any] = asdict(self)  # type: ignore[call-overload]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


# -- processors and workers --------------------------------------------------


@dataclass(frozen=True)
class PortInfo(_Snapshot):
    """An input or output of a registered processor."""

    name: str
    #: The value type as text (``int``, ``list[str]``, ``User | None``, ``Any``).
    type: str
    #: JSON Schema of one value (``{}`` when any value goes).
    schema: dict[str, Any]


@dataclass(frozen=True)
class ProcessorInfo(_Snapshot):
    """A processor as registered by the workers that implement it."""

    name: str
    inputs: tuple[PortInfo, ...]
    outputs: tuple[PortInfo, ...]
    wait: bool
    #: The processor's own backpressure limit (None: the run's default).
    max_backlog: int | None
    #: The ``description=`` given to the Processor spec.
    description: str
    #: The implementing function's docstring.
    doc: str
    module: str
    function: str
    #: "async generator", "coroutine", "generator" or "function".
    kind: str
    #: Workers that registered an implementation (online or not, until purged).
    workers: tuple[str, ...]
    #: Of those, the ones whose heartbeat is within the lease.
    online_workers: tuple[str, ...]
    #: Whether some implementing worker is online.
    online: bool
    #: When the registration was last published (unix time).
    updated: float | None

    def port(self, name: str) -> PortInfo:
        """The input or output called ``name``."""
        for port in (*self.inputs, *self.outputs):
            if port.name == name:
                return port
        raise KeyError(name)

    def spec(self) -> dict[str, Any]:
        """The processor spec, as ``Processor.spec()`` gives it (for ``Flow.from_spec``)."""
        return {
            "name": self.name,
            "inputs": [port.name for port in self.inputs],
            "outputs": [port.name for port in self.outputs],
            "wait": self.wait,
            "max_backlog": self.max_backlog,
        }

    def to_processor(self) -> Processor:
        """A :class:`~datagraph.Processor` spec to build a flow with (no implementation here)."""
        return Processor.from_spec(self.spec())


@dataclass(frozen=True)
class WorkerSnapshot(_Snapshot):
    """One worker process, from its heartbeats."""

    id: str
    host: str
    pid: int | None
    #: The executor kind ("local", "celery", ...).
    executor: str
    started: float | None
    last_beat: float
    seconds_since_beat: float
    #: Seconds without a beat after which the worker counts as dead (its own setting).
    lease: float
    #: Beat within the lease, and not stopped.
    online: bool
    #: When the worker stopped on purpose (None: it did not say).
    stopped: float | None
    #: Processors implemented there.
    processors: tuple[str, ...]
    #: Queues it consumes (Celery).
    queues: tuple[str, ...]
    #: What it runs now, as ``<run id>/<processor>``.
    running: tuple[str, ...]


# -- runs ----------------------------------------------------------------------


@dataclass(frozen=True)
class InputSummary(_Snapshot):
    """What ``start_flow`` was given for one input."""

    count: int
    #: ``repr`` of the first value, shortened.
    first: str
    #: Type name of the first value.
    type: str | None


@dataclass(frozen=True)
class RunFailure(_Snapshot):
    """Why a run failed (or was cancelled)."""

    processor: str
    type: str
    message: str
    traceback: str
    worker: str | None


@dataclass(frozen=True)
class AttemptInfo(_Snapshot):
    """One attempt of a retried run (see ``datagraph.retries``)."""

    number: int
    run_id: str
    started: float | None
    ended: float | None
    #: Why it failed (``WorkerLost``, ...); None while it runs or once it succeeded.
    cause: str | None
    message: str | None


@dataclass(frozen=True)
class RunSummary(_Snapshot):
    """A run as listed: record only, no per-edge figures."""

    id: str
    #: The flow's name ("" when it has none).
    flow: str
    #: One of :data:`RUN_STATES`.
    state: str
    started: float | None
    ended: float | None
    #: Seconds from start to end, or to now while running.
    duration: float | None
    #: Worker id of the process that started the run.
    submitter: str
    processors: tuple[str, ...]
    #: How many processors finished successfully.
    done: int
    inputs: dict[str, InputSummary]
    error: RunFailure | None
    #: The attempts of a retried run (listed on its first attempt's record), oldest first.
    attempts: tuple[AttemptInfo, ...] = field(default=(), kw_only=True)
    #: Which attempt of a retried run this run is (1 for the first, and for any other run).
    attempt: int = field(default=1, kw_only=True)
    #: The run this one is a later attempt of.
    retry_of: str | None = field(default=None, kw_only=True)
    #: A failed attempt that is being (or was) started again: not a final failure.
    retrying: bool = field(default=False, kw_only=True)


@dataclass(frozen=True)
class EdgeSnapshot(_Snapshot):
    """One edge: an IO from its producer to one reader.

    ``source`` is :data:`INPUT` for a run input, ``target`` is :data:`OUTPUT`
    for a run output read by the caller.
    """

    io: str
    source: str
    target: str
    #: Values written to the IO.
    written: int
    #: Values the target has consumed.
    read: int
    #: written - read.
    backlog: int
    #: Values per second written to the IO recently (0 when it is not moving).
    throughput: float
    #: Unix time of the last write to the IO.
    last_activity: float | None
    #: Backlog at which the source waits for this reader (None: no backpressure).
    backpressure_limit: int | None
    #: backlog / backpressure_limit, capped at 1 (None without a limit).
    fill: float | None


@dataclass(frozen=True)
class ProcessorState(_Snapshot):
    """One processor within one run."""

    name: str
    #: "pending", "running", "done", "failed" or "cancelled".
    state: str
    #: The worker running (or that ran) it.
    worker: str | None
    #: Whether that worker's heartbeat is within the lease (None: no worker yet).
    worker_online: bool | None
    started: float | None
    ended: float | None
    #: Cumulative seconds spent working, waiting for input, waiting on backpressure.
    busy_seconds: float
    idle_seconds: float
    backpressured_seconds: float
    #: Split of recent time (since this Telemetry's previous snapshot of the
    #: run, or the whole run otherwise) between the three; they sum to 1, or
    #: are all 0 when nothing was measured yet.
    busy: float
    idle: float
    backpressured: float
    #: While running, the largest share: "busy", "idle" or "backpressured".
    activity: str | None


@dataclass(frozen=True)
class RunSnapshot(RunSummary):
    """A run with its edges and processor states."""

    #: The flow spec (``Flow.spec()``): name and processors with inputs/outputs.
    spec: dict[str, Any]
    #: IOs the run returns to its caller.
    outputs: tuple[str, ...]
    #: IOs given by the caller.
    floating_inputs: tuple[str, ...]
    edges: tuple[EdgeSnapshot, ...]
    processor_states: tuple[ProcessorState, ...]
    #: Latest write to any IO of the run.
    last_activity: float | None
    #: When the snapshot was taken (unix time).
    observed_at: float

    def edge(self, io: str, target: str) -> EdgeSnapshot:
        for edge in self.edges:
            if edge.io == io and edge.target == target:
                return edge
        raise KeyError((io, target))

    def processor_state(self, name: str) -> ProcessorState:
        for state in self.processor_states:
            if state.name == name:
                return state
        raise KeyError(name)


@dataclass(frozen=True)
class StatusSnapshot(_Snapshot):
    """Everything ``datagraph status`` shows."""

    processors: tuple[ProcessorInfo, ...]
    workers: tuple[WorkerSnapshot, ...]
    runs: tuple[RunSnapshot, ...]


# -- building snapshots from store replies ------------------------------------

#: Fields of a run record that a :class:`RunSummary` needs.
SUMMARY_FIELDS = (
    "state", "started", "ended", "flow", "submitter", "done", "plan", "inputs", "error",
    "attempts", "attempt", "origin", "retries", "retry_on", "retried_by", "final",
)
#: Busy, idle and backpressured seconds of one processor.
Seconds = tuple[float, float, float]


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def decode_hash(raw: Mapping[Any, Any] | None) -> dict[str, str]:
    return {text(k): text(v) for k, v in (raw or {}).items()}


def to_float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def to_int(value: Any) -> int:
    number = to_float(value)
    return int(number) if number is not None else 0


def loads(value: Any) -> Any:
    """Parsed JSON, or None when absent or not JSON."""
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return None


def scored(reply: Any) -> list[tuple[str, float]]:
    """Members and scores of a ``WITHSCORES`` reply, whichever shape glide gives it."""
    if not reply:
        return []
    if isinstance(reply, Mapping):
        return [(text(m), float(s)) for m, s in reply.items()]
    if isinstance(reply[0], list | tuple):
        return [(text(m), float(s)) for m, s in reply]
    return [(text(reply[i]), float(reply[i + 1])) for i in range(0, len(reply), 2)]


def processor_seconds(stats: Mapping[str, str], name: str) -> Seconds:
    return (
        to_float(stats.get(f"busy:{name}")) or 0.0,
        to_float(stats.get(f"idle:{name}")) or 0.0,
        to_float(stats.get(f"bp:{name}")) or 0.0,
    )


def _shares(seconds: Sequence[float]) -> Seconds:
    total = sum(max(0.0, s) for s in seconds)
    if total <= 0:
        return (0.0, 0.0, 0.0)
    busy, idle, bp = (max(0.0, s) / total for s in seconds)
    return (busy, idle, bp)


def _ports(raw: Any) -> tuple[PortInfo, ...]:
    return tuple(
        PortInfo(
            name=str(item.get("name", "")),
            type=str(item.get("type", "Any")),
            schema=dict(item.get("schema") or {}),
        )
        for item in raw or []
        if isinstance(item, Mapping)
    )


def processor_info(
    name: str, record: Mapping[str, Any], workers: Sequence[str], online: set[str]
) -> ProcessorInfo:
    """A registration record (see ``registration.registration``) with its workers."""
    live = tuple(w for w in workers if w in online)
    backlog = record.get("max_backlog")
    return ProcessorInfo(
        name=name,
        inputs=_ports(record.get("inputs")),
        outputs=_ports(record.get("outputs")),
        wait=bool(record.get("wait", False)),
        max_backlog=backlog if isinstance(backlog, int) else None,
        description=str(record.get("description") or ""),
        doc=str(record.get("doc") or ""),
        module=str(record.get("module") or ""),
        function=str(record.get("function") or ""),
        kind=str(record.get("kind") or ""),
        workers=tuple(workers),
        online_workers=live,
        online=bool(live),
        updated=to_float(record.get("updated")),
    )


def worker_lease(fields: Mapping[str, str], default: float) -> float:
    """The lease a worker published with its heartbeat, or ``default``."""
    lease = to_float(fields.get("lease"))
    return lease if lease is not None and lease > 0 else default


def worker_snapshot(
    worker: str, beat: float, fields: Mapping[str, str], now: float, lease: float
) -> WorkerSnapshot:
    """A worker's heartbeat hash and last beat (its score in ``WORKERS``).

    ``lease`` applies when the worker did not publish its own.
    """
    pid = to_float(fields.get("pid"))
    lease = worker_lease(fields, lease)
    stopped = to_float(fields.get("stopped"))
    return WorkerSnapshot(
        id=worker,
        host=fields.get("host", ""),
        pid=int(pid) if pid is not None else None,
        executor=fields.get("executor", ""),
        started=to_float(fields.get("started")),
        last_beat=beat,
        seconds_since_beat=max(0.0, now - beat),
        lease=lease,
        online=now - beat <= lease and stopped is None,
        stopped=stopped,
        processors=_strings(loads(fields.get("processors"))),
        queues=_strings(loads(fields.get("queues"))),
        running=_strings(loads(fields.get("running"))),
    )


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def run_summary(
    run_id: str, fields: Mapping[str, str], plan: Mapping[str, Any], now: float
) -> RunSummary:
    """A run record (decoded) and its parsed plan."""
    names = tuple(
        str(p.get("name")) for p in (plan.get("flow") or {}).get("processors", [])
        if isinstance(p, Mapping)
    )
    started = to_float(fields.get("started"))
    ended = to_float(fields.get("ended"))
    state = fields.get("state", "running")
    end = ended if ended is not None else (now if state == "running" else None)
    inputs = loads(fields.get("inputs"))
    error = loads(fields.get("error"))
    return RunSummary(
        id=run_id,
        flow=fields.get("flow", ""),
        state=state,
        started=started,
        ended=ended,
        duration=max(0.0, end - started) if started is not None and end is not None else None,
        submitter=fields.get("submitter", ""),
        processors=names,
        done=to_int(fields.get("done")),
        inputs={
            str(io): InputSummary(
                count=to_int(s.get("count")), first=str(s.get("first", "")), type=s.get("type")
            )
            for io, s in (inputs.items() if isinstance(inputs, Mapping) else ())
            if isinstance(s, Mapping)
        },
        error=RunFailure(
            processor=str(error.get("processor", "")),
            type=str(error.get("type", "")),
            message=str(error.get("message", "")),
            traceback=str(error.get("traceback", "")),
            worker=error.get("worker"),
        ) if isinstance(error, Mapping) else None,
        attempts=tuple(
            AttemptInfo(
                number=to_int(a.get("number")), run_id=str(a.get("run_id", "")),
                started=to_float(a.get("started")), ended=to_float(a.get("ended")),
                cause=a.get("cause"), message=a.get("message"),
            )
            for a in (loads(fields.get("attempts")) or ())
            if isinstance(a, Mapping)
        ),
        attempt=to_int(fields.get("attempt")) or 1,
        retry_of=fields.get("origin") if fields.get("origin") not in (None, run_id) else None,
        retrying=pending_retry(fields),
    )


@dataclass(frozen=True)
class EdgeSpec:
    """An edge of a run's plan: an IO from its producer to one reader."""

    io: str
    source: str
    target: str
    #: Backlog at which the source waits for this reader; None for a run input, an
    #: output read by the caller and a ``wait=True`` reader (its writer never waits for it).
    limit: int | None


def edge_specs(plan: Mapping[str, Any]) -> list[EdgeSpec]:
    """The edges of a run's plan, in flow order: run inputs first, then by producer."""
    producers: dict[str, str] = plan.get("producers") or {}
    readers: dict[str, list[str]] = plan.get("readers") or {}
    outputs: list[str] = plan.get("outputs") or []
    limits: dict[str, int] = plan.get("max_backlog") or {}
    processors = (plan.get("flow") or {}).get("processors", [])
    waiting = {p.get("name") for p in processors if isinstance(p, Mapping) and p.get("wait")}
    specs = []
    for io in dict.fromkeys([*(plan.get("floating_inputs") or []), *producers]):
        source = producers.get(io, INPUT)
        limit = limits.get(source) if source != INPUT else None
        for target in [*readers.get(io, []), *([OUTPUT] if io in outputs else [])]:
            bounded = target != OUTPUT and target not in waiting
            specs.append(EdgeSpec(io, source, target, limit if bounded else None))
    return specs


def run_snapshot(
    run_id: str,
    record: Mapping[str, str],
    stats: Mapping[str, str],
    pos: Mapping[str, str],
    *,
    online: set[str],
    now: float,
    windows: Mapping[str, Seconds] | None = None,
    rates: Mapping[str, float] | None = None,
) -> RunSnapshot:
    """A run from its record, ``stats`` and ``pos`` hashes (all decoded).

    ``online`` holds the workers whose heartbeat is within the lease;
    ``windows`` the recent busy / idle / backpressured seconds per processor
    (the whole run is used where missing); ``rates`` fallback values per
    second per IO, for stores where writers publish no ``rate:<io>``.
    """
    plan = loads(record.get("plan"))
    plan = plan if isinstance(plan, Mapping) else {}
    summary = run_summary(run_id, record, plan, now)
    spec: dict[str, Any] = plan.get("flow") or {"name": None, "processors": []}
    floating: list[str] = plan.get("floating_inputs") or []
    outputs: list[str] = plan.get("outputs") or []
    running = summary.state == "running"

    edges: list[EdgeSnapshot] = []
    latest: float | None = None
    moving: dict[str, tuple[int, float | None, float]] = {}  # io -> written, last write, rate
    for edge in edge_specs(plan):
        io = edge.io
        if io not in moving:
            written = to_int(stats.get(f"written:{io}"))
            last = to_float(stats.get(f"last:{io}"))
            if last is None and edge.source == INPUT:
                last = summary.started
            if last is not None:
                latest = last if latest is None else max(latest, last)
            throughput = 0.0
            if running:
                rate = to_float(stats.get(f"rate:{io}"))
                if rate is not None:
                    throughput = rate if last is not None and now - last <= RATE_FRESH else 0.0
                elif rates is not None:
                    throughput = rates.get(io, 0.0)
            moving[io] = (written, last, throughput)
        written, last, throughput = moving[io]
        read = to_int(pos.get(keys.pos_field(edge.target, io)))
        backlog = max(0, written - read)
        edges.append(EdgeSnapshot(
            io=io,
            source=edge.source,
            target=edge.target,
            written=written,
            read=read,
            backlog=backlog,
            throughput=max(0.0, throughput),
            last_activity=last,
            backpressure_limit=edge.limit,
            fill=min(1.0, backlog / edge.limit) if edge.limit else None,
        ))

    states = []
    for name in summary.processors:
        state = stats.get(f"state:{name}") or "pending"
        worker = stats.get(f"worker:{name}")
        totals = processor_seconds(stats, name)
        window = (windows or {}).get(name) if state == "running" else None
        shares = _shares(window or totals)
        activity = None
        if state == "running" and sum(shares) > 0:
            activity = ("busy", "idle", "backpressured")[shares.index(max(shares))]
        states.append(ProcessorState(
            name=name,
            state=state,
            worker=worker,
            worker_online=(worker in online) if worker else None,
            started=to_float(stats.get(f"started:{name}")),
            ended=to_float(stats.get(f"ended:{name}")),
            busy_seconds=totals[0],
            idle_seconds=totals[1],
            backpressured_seconds=totals[2],
            busy=shares[0],
            idle=shares[1],
            backpressured=shares[2],
            activity=activity,
        ))

    return RunSnapshot(
        **{f.name: getattr(summary, f.name) for f in dataclass_fields(RunSummary)},
        spec=spec,
        outputs=tuple(outputs),
        floating_inputs=tuple(floating),
        edges=tuple(edges),
        processor_states=tuple(states),
        last_activity=latest,
        observed_at=now,
    )
