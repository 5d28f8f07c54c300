"""The Supervisor: one per process, the entry point of every run.

``Supervisor.attach(...)`` is synchronous and safe at import time: it only
records the configuration (and starts an embedded Valkey when no store is
configured).  Clients are created lazily, once per event loop, the first time
a coroutine needs them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import socket
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar

import anyio
import anyio.lowlevel

from . import context
from . import rerun as _rerun
from ._backend import LoopHost, current_loop
from .exceptions import (
    ConfigError,
    MissingInputError,
    RunCancelled,
    RunError,
    RunLostError,
    StoreError,
    UnknownInputError,
)
from .executors.base import Executor
from .executors.local import LocalExecutor
from .flow import Flow
from .io import IO, IOVal
from .liveness import start_heartbeat
from .plan import Plan
from .recording import RunRecord
from .rerun import kept_inputs_field
from .retries import RetryPolicy, follow_attempt, record_fields, start_retried
from .runtime import Runtime
from .settings import DEVELOPMENT_SECRET, Settings
from .store import keys
from .store.client import BlockingPool, StoreAddress, connect, parse_redis_config, pipeline, refused
from .store.codec import Codec
from .store.scripts import TERMINAL, finish_run, start_run_command
from .streams import BATCH, MARKER, entry_id

__all__ = ["Supervisor"]

log = logging.getLogger("datagraph")

#: Seconds between two trims of the run index by one process.
_INDEX_TRIM_INTERVAL = 1.0

RuntimeHook = Callable[["Supervisor", Runtime], Awaitable[None]]


class _Instance:
    """``Supervisor.instance``: the attached supervisor, or a clear error."""

    def __get__(self, obj: object, owner: type[Supervisor]) -> Supervisor:
        current = owner._current
        if current is None:
            raise context.not_attached()
        return current


class Supervisor:
    """Coordinates runs in this process: store connections, executor, settings."""

    instance: ClassVar[_Instance] = _Instance()
    _current: ClassVar[Supervisor | None] = None
    #: Coroutines run once per event loop when a runtime is created (telemetry hooks).
    runtime_hooks: ClassVar[list[RuntimeHook]] = [start_heartbeat]

    def __init__(
        self,
        address: StoreAddress,
        executor: Executor,
        settings: Settings,
        *,
        embedded: Any = None,
    ) -> None:
        self.address = address
        self.executor = executor
        self.settings = settings
        self._embedded = embedded
        secret = settings.secret
        if secret is None:
            if embedded is not None:
                secret = secrets.token_bytes(32)
            else:
                log.warning(
                    "stream payloads are signed with the development key; set DATAGRAPH_SECRET "
                    "(the same in every service) before sharing this Valkey with anyone"
                )
                secret = DEVELOPMENT_SECRET
        self.codec = Codec(secret)
        #: The key that signs stream payloads (generated for an embedded store): what an
        #: executor gives the worker processes it starts, so they read what this one writes.
        self.signing_secret = secret
        self.worker_id = _new_worker_id()
        self._runtimes: weakref.WeakKeyDictionary[object, Runtime] = weakref.WeakKeyDictionary()
        self._creating: weakref.WeakKeyDictionary[object, anyio.Event] = weakref.WeakKeyDictionary()
        self._closed = False
        #: When this process last dropped expired runs from the run index (monotonic).
        self._index_trimmed_at = -math.inf

    # -- lifecycle -------------------------------------------------------

    @classmethod
    def attach(
        cls,
        redis_config: Mapping[str, Any] | None = None,
        executor: Executor | None = None,
        **settings: Any,
    ) -> Supervisor:
        """Configure this process's supervisor; returns it (also ``Supervisor.instance``)."""
        if cls._current is not None:
            raise ConfigError(
                "a Supervisor is already attached in this process; call Supervisor.detach() "
                "before attaching another"
            )
        if executor is None:
            executor = LocalExecutor()
        if not isinstance(executor, Executor):
            raise ConfigError(f"executor must be an Executor (e.g. LocalExecutor()), got {executor!r}")
        config = Settings.from_env(**settings)
        embedded = None
        if redis_config is None and os.environ.get("DATAGRAPH_REDIS_URL"):
            redis_config = {"url": os.environ["DATAGRAPH_REDIS_URL"]}
        if redis_config is None:
            from .embedded import EmbeddedValkey

            embedded = EmbeddedValkey()
            url = embedded.start()
            log.warning("no redis_config given: using an embedded Valkey at %s", url)
            redis_config = {"url": url}
        if not isinstance(redis_config, Mapping):
            raise ConfigError(
                f"redis_config must be a mapping such as {{'url': 'redis://localhost:6379/0'}}, "
                f"got {redis_config!r}"
            )
        address = parse_redis_config(redis_config)
        supervisor = cls(address, executor, config, embedded=embedded)
        keys.use_namespace(config.namespace)
        cls._make_current(supervisor)
        return supervisor

    @classmethod
    def _make_current(cls, supervisor: Supervisor | None) -> None:
        cls._current = supervisor
        context.set_attached(supervisor)

    @classmethod
    def detach(cls) -> None:
        """Forget the attached supervisor; stop an embedded Valkey it started."""
        current = cls._current
        cls._make_current(None)
        if current is not None:
            current._close_sync()
            keys.use_namespace(keys.DEFAULT_NAMESPACE)

    @classmethod
    async def adetach(cls) -> None:
        """Like ``detach()``, but also closes this loop's connections cleanly."""
        current = cls._current
        cls._make_current(None)
        if current is not None:
            await current.aclose()
            keys.use_namespace(keys.DEFAULT_NAMESPACE)

    def _forked(self) -> None:
        """In a forked child: a worker id of its own; the parent's connections are not ours."""
        self.worker_id = _new_worker_id()
        self._runtimes = weakref.WeakKeyDictionary()
        self._creating = weakref.WeakKeyDictionary()
        self._embedded = None  # an embedded Valkey stays the parent's to stop

    def _close_sync(self) -> None:
        self._closed = True
        self.executor.close()
        for runtime in list(self._runtimes.values()):
            runtime.host.cancel()
            runtime.close_now()
        self._runtimes = weakref.WeakKeyDictionary()
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None

    async def aclose(self) -> None:
        loop = current_loop()
        runtime = self._runtimes.pop(loop, None)
        if runtime is not None:
            await runtime.aclose()
        await self.executor.aclose()
        self._close_sync()

    @property
    def embedded_url(self) -> str | None:
        """The URL of the embedded Valkey this supervisor started, if any."""
        return self.address.url if self._embedded is not None else None

    # -- per-loop runtime ------------------------------------------------

    async def runtime(self) -> Runtime:
        """This event loop's connections and host task group (created on first use)."""
        if self._closed:
            raise ConfigError("this Supervisor was detached; attach a new one")
        loop = current_loop()
        runtime = self._runtimes.get(loop)
        if runtime is not None:
            return runtime
        creating = self._creating.get(loop)
        if creating is not None:
            await creating.wait()
            return await self.runtime()
        event = self._creating[loop] = anyio.Event()
        try:
            settings = self.settings
            client = await connect(
                self.address,
                request_timeout=settings.request_timeout,
                connect_timeout=settings.connect_timeout,
            )
            pool = BlockingPool(
                self.address,
                block=settings.read_block,
                connect_timeout=settings.connect_timeout,
                max_clients=settings.max_blocking_readers,
            )
            host = LoopHost()
            await host.start()
            runtime = Runtime(settings, self.codec, self.address, client, pool, host, self.worker_id)
            self._runtimes[loop] = runtime
            for hook in self.runtime_hooks:
                await hook(self, runtime)
            return runtime
        finally:
            del self._creating[loop]
            event.set()

    # -- runs --------------------------------------------------------------

    async def start_flow(
        self,
        flow: Flow,
        inputs: Iterable[IOVal[Any]] = (),
        *,
        all_outputs: bool = False,
        run_id: str | None = None,
        retries: int | None = None,
        retry_on: Iterable[type[BaseException] | str] | None = None,
    ) -> dict[str, IO[Any]]:
        """Start a run of ``flow``; returns its outputs as soon as it is dispatched.

        The result maps each final output (one no processor of the flow reads)
        to its :class:`IO`; ``all_outputs=True`` returns every output.

        ``retries`` (default: the flow's, else the ``retries`` setting, 0) starts
        the run again when it fails for a reason other than its processors' code,
        or with an exception type named in ``retry_on``; the returned IO handles
        follow the attempts and deliver each value once (see :mod:`datagraph.retries`).
        """
        if not isinstance(flow, Flow):
            raise TypeError(f"start_flow() takes a Flow, got {flow!r}")
        policy = RetryPolicy.build(retries=retries, retry_on=retry_on, flow=flow, settings=self.settings)
        if policy.retries:
            return await start_retried(
                self, flow, list(inputs), all_outputs=all_outputs, run_id=run_id, policy=policy
            )
        topo = flow.topology  # raises UnresolvedFlowError
        given: dict[str, list[Any]] = {}
        for item in inputs:
            if not isinstance(item, IOVal):
                raise TypeError(f"inputs must be IOVal objects, got {item!r}")
            given.setdefault(item.name, []).append(item.value)
        missing = [io for io in topo.floating_inputs if io not in given]
        if missing:
            them = "it" if len(missing) == 1 else "them"
            raise MissingInputError(
                f"the flow reads {', '.join(map(repr, missing))} but no processor produces {them} "
                f"and start_flow() was not given {them}; "
                f"pass inputs=[IOVal(name={missing[0]!r}, value=...)]"
            )
        unknown = [io for io in given if io not in topo.floating_inputs]
        if unknown:
            produced = [io for io in unknown if io in topo.producers]
            why = (
                f"{produced[0]!r} is produced by processor {topo.producers[produced[0]]!r}"
                if produced
                else "no processor of the flow reads it"
            )
            raise UnknownInputError(
                f"start_flow() was given input {unknown[0]!r}, but {why}; "
                f"the flow's inputs are {list(topo.floating_inputs)}"
            )
        run_id = run_id or uuid.uuid4().hex
        outputs = list(topo.producers) if all_outputs else list(topo.final_outputs)
        plan = Plan.build(
            run_id,
            flow,
            outputs=outputs,
            default_backlog=self.settings.max_backlog,
            trim=not all_outputs,
        )
        await self.executor.check(self, plan, list(flow.processors))
        runtime = await self.runtime()
        record = self._run_record(runtime, plan, given)
        if self.executor.runs_here:
            await self._start_recording(runtime, plan, flow, record)
        else:
            await self._send_record(runtime, record)
            for name in topo.order:
                await self.executor.dispatch(self, plan, flow.processor(name))
        # The caller's reads publish positions too, so telemetry can show what it consumed.
        reader = keys.OUTPUT_READER if self.settings.telemetry else None
        return {io: IO(self, run_id, io, reader=reader, producers=plan.producers) for io in outputs}

    async def _start_recording(self, runtime: Runtime, plan: Plan, flow: Flow, record: RunRecord) -> None:
        """Dispatch the run's processors here, its record going with their first pipeline.

        Returns once the record is in the store; if it cannot be written, the
        processors started here are stopped and the error is raised.
        """
        run_id = plan.run_id
        runtime.recording[run_id] = record
        try:
            for name in flow.topology.order:
                await self.executor.dispatch(self, plan, flow.processor(name))
            # Each processor's first step, up to its first wait: one that writes at once
            # takes the record into that pipeline (two turns: Trio runs a batch of tasks
            # in any order).
            await anyio.lowlevel.checkpoint()
            await anyio.lowlevel.checkpoint()
            while not record.settled:
                if not record.taken:
                    await self._send_record(runtime, record)
                await record.changed()  # a carrier that failed gives it back
            await record.wait()
        except BaseException as exc:
            record.failed(exc)
            runtime.stop_run(run_id, RunLostError(f"run {run_id} could not be recorded: {exc}"))
            if record.taken:
                # Its pipeline went out (start_flow was cancelled, or failed, while it was on
                # its way): the run may be in the store, where nobody would end it.
                runtime.host.start_soon(
                    self._end_abandoned, runtime, plan, exc, name=f"datagraph-end-{run_id}"
                )
            if record.holders <= 0:
                runtime.recording.pop(run_id, None)
            # Otherwise it stays until they have ended (Runtime.release_record).
            raise
        else:
            # In the store: nothing waits for it any more.
            runtime.recording.pop(run_id, None)

    async def _end_abandoned(self, runtime: Runtime, plan: Plan, reason: BaseException) -> None:
        """End run ``plan.run_id``, whose start was given up after its record went out.

        Its processors here are stopped already; if the record got into the store,
        the run is ended there (cancelled, or failed with ``reason``) rather than
        left "running" until it expires.
        """
        cancelled = isinstance(reason, anyio.get_cancelled_exc_class())
        error = None if cancelled else {
            "processor": "(start_flow)", "type": type(reason).__name__, "message": str(reason),
            "traceback": "", "worker": self.worker_id,
        }  # fmt: skip
        try:
            await finish_run(runtime, plan, "cancelled" if cancelled else "failed", error=error)
        except RunLostError:
            return  # the record never got in: there is no run to end
        except StoreError as exc:
            log.warning(
                "run %s: its start was given up (%r) and its end could not be recorded: %s; "
                "it stays running until it expires",
                plan.run_id,
                reason,
                exc,
            )

    async def _send_record(self, runtime: Runtime, record: RunRecord) -> None:
        """Send the run's record in a pipeline of its own."""
        commands = record.take()
        assert commands is not None, "a record is sent once"
        try:
            replies, attempts = await pipeline(
                runtime.client, commands, retry_for=self.settings.reconnect_timeout, doing=record.doing
            )
        except BaseException as exc:
            record.failed(exc)
            raise
        record.sent(replies, attempts)

    def _run_record(self, runtime: Runtime, plan: Plan, given: dict[str, list[Any]]) -> RunRecord:
        """The commands that record the starting run and write its inputs."""
        run_id = plan.run_id
        now = repr(time.time())
        ttl = str(int(self.settings.max_run_duration))
        summary = json.dumps({io: _summarise(values) for io, values in given.items()})
        # Seconds after its start by which every key of a run has expired.
        horizon = self.settings.max_run_duration + self.settings.retention
        record = [
            "state", "running", "started", now, "plan", plan.to_json(), "inputs", summary,
            "done", "0", "flow", plan.flow.get("name") or "", "submitter", self.worker_id,
            *record_fields.get(),
        ]  # fmt: skip
        ok = self.codec.end_marker("(input)")
        max_batch = self.settings.max_batch
        streams: dict[str, tuple[list[tuple[str, str, bytes]], int]] = {}
        for io, values in given.items():
            entries = [
                (entry_id(seq), BATCH, self.codec.encode_batch(values[start : start + max_batch]))
                for seq, start in enumerate(range(0, len(values), max_batch), 1)
            ]
            entries.append((entry_id(len(entries) + 1), MARKER, ok))
            streams[io] = (entries, len(values))
        # The run's own keys in one script (one slot, so on a cluster too); the run index
        # is a global key, in a command of its own.
        commands: list[list[Any]] = [
            start_run_command(
                run_id,
                ttl=ttl,
                now=now,
                record=record,
                kept=kept_inputs_field(self.codec, self.settings, given),
                streams=streams,
            ),
            ["ZADD", keys.RUNS, now, run_id],
        ]
        ticks = time.monotonic()
        if ticks - self._index_trimmed_at >= _INDEX_TRIM_INTERVAL:
            # Index entries of runs whose keys have surely expired (a run's keys live at most
            # max_run_duration + retention): the index stays bounded with no telemetry reader.
            # Once a second per process is enough; not with every run.
            self._index_trimmed_at = ticks
            commands.append(["ZREMRANGEBYSCORE", keys.RUNS, "-inf", f"({time.time() - horizon!r}"])
        doing = f"recording run {run_id} in Valkey at {self.address.url}"

        def check(replies: list[Any], attempts: int) -> None:
            # Every command here may run twice (explicit ids, plain sets): safe to retry.
            if attempts == 1:
                refused(replies, doing, own_entries=True)  # the run id is new: its streams are ours

        # Processors dispatched here take the inputs from the plan: no read back (see Plan.given).
        limit = self.settings.hand_over_inputs_max_bytes
        if limit and sum(len(e[2]) for entries, _ in streams.values() for e in entries) <= limit:
            plan.given.update((io, entries) for io, (entries, _) in streams.items())
        return RunRecord(commands, check, doing)

    async def rerun(self, run_id: str, *, inputs: Mapping[str, list[Any]] | None = None) -> str:
        """Start an ended run's flow again; returns the new run's id.

        The new run gets the inputs ``run_id`` was started with, or ``inputs``
        (io -> values) when given, and is linked to it (see :mod:`datagraph.rerun`).
        Raises :class:`~datagraph.exceptions.RerunError` when the run has not
        ended, or its inputs were too large to keep and none are given.
        """
        return await _rerun.rerun(self, run_id, inputs=inputs)

    async def run_state(self, run_id: str) -> str | None:
        """The run's state (running, succeeded, failed, cancelled), or None if unknown."""
        runtime = await self.runtime()
        (state,), _ = await pipeline(
            runtime.client,
            [["HGET", keys.run(run_id), "state"]],
            retry_for=self.settings.reconnect_timeout,
            doing=f"reading the state of run {run_id}",
        )
        refused([state], f"reading the state of run {run_id}")
        return state.decode() if state is not None else None

    async def wait(self, run_id: str, timeout: float | None = None) -> str:  # noqa: ASYNC109
        """Wait until the run reaches a terminal state; returns it.

        A retried run's state is its last attempt's: a failed attempt that is
        being retried is followed to the next one.
        """
        delay = 0.005
        with anyio.fail_after(timeout):
            while True:
                state = await self.run_state(run_id)
                if state is None:
                    raise RunError(f"run {run_id} is unknown (or expired)", run_id=run_id)
                if state in ("failed", "cancelled"):  # an attempt the run's retries replaced
                    following = await follow_attempt(self, run_id)
                    if following is not None:
                        run_id = following or run_id
                        if following:
                            delay = 0.005
                        await anyio.sleep(delay)
                        delay = min(delay * 2, 0.1)
                        continue
                if state in TERMINAL:
                    return state
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.1)

    async def cancel(self, run_id: str) -> bool:
        """Cancel a run: its readers raise ``RunCancelled``, its processors stop.

        Returns False when the run had already ended.  A retried run is cancelled
        in its current attempt.
        """
        if await self.run_state(run_id) in ("failed", "cancelled"):
            following = await follow_attempt(self, run_id)
            if following:
                return await self.cancel(following)
        runtime = await self.runtime()
        doing = f"cancelling run {run_id}"
        (raw,), _ = await pipeline(
            runtime.client, [["HGET", keys.run(run_id), "plan"]],
            retry_for=self.settings.reconnect_timeout, doing=doing,
        )  # fmt: skip
        refused([raw], doing)
        if raw is None:
            raise RunError(f"run {run_id} is unknown (or expired)", run_id=run_id)
        plan = Plan.from_json(raw)
        changed = await finish_run(runtime, plan, "cancelled", error=None)
        runtime.stop_run(run_id, RunCancelled(f"run {run_id} was cancelled", run_id=run_id))
        if changed:
            marker = self.codec.encode_marker({"status": "cancelled", "processor": "(cancel)"})
            retention = str(int(self.settings.retention))
            commands: list[list[Any]] = []
            for io in plan.ios:
                commands.append(["XADD", keys.stream(run_id, io), "*", MARKER, marker])
                commands.append(["EXPIRE", keys.stream(run_id, io), retention])
            replies, _ = await pipeline(
                runtime.client, commands, retry_for=self.settings.reconnect_timeout, doing=doing
            )
            refused(replies, doing)
        return changed


def _new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _after_fork_in_child() -> None:
    # Prefork pools (Celery's, multiprocessing's) fork after attach(): each child is a worker.
    if Supervisor._current is not None:
        Supervisor._current._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _summarise(values: list[Any], limit: int = 200) -> dict[str, Any]:
    preview = repr(values[0]) if values else ""
    if len(preview) > limit:
        preview = preview[: limit - 1] + "…"
    return {"count": len(values), "first": preview, "type": type(values[0]).__name__ if values else None}
