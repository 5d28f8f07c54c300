"""Retry policies: a run that failed for a reason other than its own code starts again.

``start_flow(flow, inputs, retries=N, retry_on=(...))`` (or ``Flow(...,
retries=N)``, or the ``retries`` setting) makes a run *retried*: when an
attempt fails because a worker was lost (``WorkerLost``), handed its work
over while stopping (``WorkerStopping``), nobody started a processor in time
(``DispatchTimeout``) or none could be sent to the broker
(``DispatchError``), the store lost writes (``WritesLost``) or stayed
unreachable past ``reconnect_timeout`` (``StoreError``), or a processor
raised an exception whose type is named in ``retry_on``, the run is started
again from its inputs, after a backoff (``retry_backoff``, doubled each
time), up to N more times.  A processor's own exception is not retried unless
its type is listed.

Each attempt is a run of its own (attempt 1 keeps the run id ``start_flow``
returned; attempt n is ``<run id>.<n>``), so a failed attempt's keys stay as
they were for inspection.  The first attempt's record (``keys.run``) lists
every attempt in its ``attempts`` field (JSON: number, run id, start and end
times, cause); each attempt's record says which ``attempt`` it is, of which
``origin``, with how many ``retries``, and which attempt ``retried_by`` it,
or that its failure was ``final``.

**Exactly once at the caller.** The :class:`~datagraph.IO` handles that
``start_flow`` returned follow the attempts: a reader that has delivered k
values of an output goes on with value k+1 of the next attempt, never a
duplicate and never a gap.  That holds when the flow is *deterministic*:
the same inputs give the same values in the same order.  It is checked: the
new attempt's first k values are compared with the k values delivered (a
BLAKE3 digest of their encodings, the delivered ones read back from the
failed attempt's stream), and a difference fails the reader with
:class:`~datagraph.exceptions.RetryMismatchError` naming the run and the
output, rather than delivering a different sequence.  The check costs nothing
until a retry happens.  Within one attempt every processor reads its inputs
exactly once, as in any run.

The retries are driven by the process that started the run (the one holding
its IO handles): a reader that meets a retried failure, or a watcher task on
that process's event loop when nobody reads, starts the next attempt.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from blake3 import blake3

from .exceptions import (
    ConfigError,
    DatagraphError,
    ProcessorFailed,
    RetryMismatchError,
    RunCancelled,
    RunLostError,
    StoreError,
)
from .store import keys
from .store.client import pipeline, refused
from .store.scripts import TERMINAL
from .streams import BATCH, END, MARKER, StreamReader, failure_error, run_error

if TYPE_CHECKING:
    from .flow import Flow
    from .io import IO, IOVal
    from .runtime import Runtime
    from .supervisor import Supervisor

__all__ = [
    "RETRIED_CAUSES",
    "Attempt",
    "RetryPolicy",
    "RunAttempts",
    "cause_name",
    "follow_attempt",
    "pending_retry",
    "start_retried",
]

log = logging.getLogger("datagraph.retries")

#: Fields an attempt of a retried run adds to its record when ``start_flow`` creates it
#: (its policy), so that no round trip of its own is needed.
record_fields: ContextVar[tuple[str, ...]] = ContextVar("datagraph_record_fields", default=())

#: Causes of failure that are not the user's code: always retried under a policy.
RETRIED_CAUSES = frozenset(
    {
        "WorkerLost", "WorkerStopping", "DispatchTimeout", "DispatchError", "WritesLost",
        "StoreError", "RunLostError",
    }
)
#: Longest wait between two attempts, in seconds.
MAX_BACKOFF = 30.0

# Fields of the run record (keys.run) this module writes.
ATTEMPT = "attempt"
ATTEMPTS = "attempts"
ORIGIN = "origin"
RETRIES = "retries"
RETRY_ON = "retry_on"
RETRIED_BY = "retried_by"
FINAL = "final"


def cause_name(error: BaseException) -> str:
    """The name a failure is retried by: a processor failure's type, or the exception's."""
    if isinstance(error, ProcessorFailed):
        return error.error_type
    if isinstance(error, StoreError):
        return "RunLostError" if isinstance(error, RunLostError) else "StoreError"
    return type(error).__name__


def _type_names(retry_on: Iterable[type[BaseException] | str] | str) -> frozenset[str]:
    if isinstance(retry_on, str):
        retry_on = [part for part in retry_on.split(",") if part.strip()]
    names = set()
    for item in retry_on:
        if isinstance(item, str):
            name = item.strip().rsplit(".", 1)[-1]
            if not name.isidentifier():
                raise ConfigError(
                    f"retry_on names exception types, e.g. retry_on=[TimeoutError] or "
                    f"retry_on='TimeoutError'; {item!r} is not a type name"
                )
            names.add(name)
        elif isinstance(item, type) and issubclass(item, BaseException):
            names.add(item.__name__)
        else:
            raise ConfigError(
                f"retry_on takes exception types or their names, got {item!r}; "
                "e.g. retry_on=[TimeoutError, 'ConnectionResetError']"
            )
    return frozenset(names)


@dataclass(frozen=True)
class RetryPolicy:
    """How often a run is started again, after which failures, with what backoff."""

    retries: int = 0
    retry_on: frozenset[str] = frozenset()
    backoff: float = 0.5

    @classmethod
    def build(
        cls,
        *,
        retries: int | None,
        retry_on: Iterable[type[BaseException] | str] | str | None,
        flow: Flow | None = None,
        settings: Any = None,
    ) -> RetryPolicy:
        """The policy of a run: ``start_flow``'s arguments, else the flow's, else the settings'."""
        chosen = retries
        if chosen is None and flow is not None:
            chosen = getattr(flow, "retries", None)
        if chosen is None:
            chosen = settings.retries if settings is not None else 0
        if isinstance(chosen, bool) or not isinstance(chosen, int) or chosen < 0:
            raise ConfigError(f"retries must be a whole number of retries >= 0, got {chosen!r}")
        names = _type_names(retry_on) if retry_on is not None else frozenset()
        if flow is not None:
            names |= _type_names(getattr(flow, "retry_on", ()))
        if settings is not None:
            names |= _type_names(settings.retry_on)
        backoff = settings.retry_backoff if settings is not None else 0.5
        return cls(retries=chosen, retry_on=names, backoff=backoff)

    def retryable(self, error: BaseException) -> bool:
        """Whether a failure with ``error`` is started again (when attempts remain)."""
        if isinstance(error, RunCancelled | RetryMismatchError):
            return False
        name = cause_name(error)
        return name in RETRIED_CAUSES or name in self.retry_on

    def delay(self, failed_attempts: int) -> float:
        """Seconds to wait before the attempt after ``failed_attempts`` failures."""
        return float(min(MAX_BACKOFF, self.backoff * 2 ** max(0, failed_attempts - 1)))


@dataclass
class Attempt:
    """One attempt of a retried run."""

    number: int
    run_id: str
    started: float
    ended: float | None = None
    #: Why it failed (``WorkerLost``, ...), or None while it runs or when it succeeded.
    cause: str | None = None
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number, "run_id": self.run_id, "started": self.started,
            "ended": self.ended, "cause": self.cause, "message": self.message,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Attempt:
        return cls(
            number=int(data["number"]), run_id=str(data["run_id"]), started=float(data["started"]),
            ended=None if data.get("ended") is None else float(data["ended"]),
            cause=data.get("cause"), message=data.get("message"),
        )

    def describe(self) -> str:
        what = f"{self.cause}: {self.message}" if self.cause else "no failure recorded"
        return f"attempt {self.number} (run {self.run_id}): {what}"


def attempts_from(raw: bytes | str | None) -> tuple[Attempt, ...]:
    """The ``attempts`` field of a run record, parsed (empty when absent or unreadable)."""
    if not raw:
        return ()
    try:
        items = json.loads(raw)
        return tuple(Attempt.from_dict(item) for item in items)
    except (ValueError, KeyError, TypeError):
        return ()


def pending_retry(fields: Mapping[str, Any]) -> bool:
    """Whether a failed run (its record's fields, as text) is about to be started again.

    True when another attempt already replaced it, or its cause is retried and
    attempts remain and no final decision was recorded: alerts wait for the last attempt.
    """
    if fields.get("state") != "failed":
        return False
    if fields.get(RETRIED_BY):
        return True
    if fields.get(FINAL) or not fields.get(RETRIES):
        return False
    try:
        attempt, retries = int(fields.get(ATTEMPT) or 1), int(fields[RETRIES])
        retry_on = set(json.loads(fields.get(RETRY_ON) or "[]"))
    except (ValueError, TypeError):
        return False
    cause = str(run_error(fields.get("error")).get("type", ""))
    return attempt <= retries and (cause in RETRIED_CAUSES or cause in retry_on)


async def follow_attempt(supervisor: Supervisor, run_id: str) -> str | None:
    """For a failed run: the attempt that replaced it, "" while one is about to, or None.

    None means the failure is final (not retried, or no attempt left).
    """
    runtime = await supervisor.runtime()
    doing = f"reading the attempts of run {run_id}"
    (reply,), _ = await pipeline(
        runtime.client,
        [["HMGET", keys.run(run_id), "state", "error", ATTEMPT, RETRIES, RETRY_ON, RETRIED_BY, FINAL]],
        retry_for=runtime.settings.reconnect_timeout, doing=doing,
    )
    refused([reply], doing)
    names = ("state", "error", ATTEMPT, RETRIES, RETRY_ON, RETRIED_BY, FINAL)
    fields = {n: _text(v) for n, v in zip(names, reply, strict=True) if v is not None}
    if fields.get(RETRIED_BY):
        return fields[RETRIED_BY]
    return "" if pending_retry(fields) else None


def _exhausted(cause: BaseException, attempts: Sequence[Attempt]) -> BaseException:
    """The last cause again, with every attempt listed."""
    listed = "; ".join(a.describe() for a in attempts)
    note = f" (after {len(attempts)} attempts, none left: {listed})"
    error: BaseException
    if isinstance(cause, ProcessorFailed):
        error = ProcessorFailed(
            cause.processor, cause.error_type, cause.error_message + note, cause.traceback,
            run_id=cause.run_id, worker=cause.worker,
        )
    elif isinstance(cause, DatagraphError):
        error = type(cause)(f"{cause}{note}")
    else:
        return cause
    error.__cause__ = cause
    if isinstance(error, DatagraphError):
        error.attempts = tuple(attempts)
    return error


def _ended(attempt: Attempt, cause: BaseException) -> None:
    attempt.ended = time.time()
    attempt.cause = cause_name(cause)
    attempt.message = str(cause)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RunAttempts:
    """The attempts of one retried run, as its starting process drives them.

    Shared by the run's IO handles: each reader that meets a failure asks
    :meth:`after_failure` which attempt to read next, and one watcher task
    (:meth:`watch`) does the same for failures nobody reads.
    """

    def __init__(
        self,
        supervisor: Supervisor,
        flow: Flow,
        inputs: Sequence[IOVal[Any]],
        *,
        all_outputs: bool,
        policy: RetryPolicy,
        run_id: str,
    ) -> None:
        self.supervisor = supervisor
        self.flow = flow
        self.inputs = list(inputs)
        self.all_outputs = all_outputs
        self.policy = policy
        self.origin = run_id
        self.attempts: list[Attempt] = [Attempt(1, run_id, time.time())]
        self._current = run_id
        self._lock = anyio.Lock()
        self._final: BaseException | None = None
        self._changed = anyio.Event()

    @property
    def current(self) -> str:
        """The run id of the attempt running now (or the last one started)."""
        return self._current

    def __repr__(self) -> str:
        return f"<RunAttempts of run {self.origin}: {len(self.attempts)} attempt(s)>"

    def reader(
        self, ios: Sequence[str], *, reader: str | None, producers: Mapping[str, str]
    ) -> RetryingReader:
        """A reader of ``ios`` that follows the attempts (what the run's IO handles open)."""
        return RetryingReader(self, ios, reader=reader, producers=producers)

    async def record_start(self, runtime: Runtime) -> None:
        """Start the watcher (the policy is already in the first attempt's record)."""
        runtime.host.start_soon(self.watch, name=f"datagraph-retries-{self.origin}")

    def policy_fields(self, attempt: Attempt) -> list[str]:
        """The fields that record ``attempt`` and the policy in the attempt's run record."""
        return [
            ATTEMPT, str(attempt.number), ORIGIN, self.origin, RETRIES, str(self.policy.retries),
            RETRY_ON, json.dumps(sorted(self.policy.retry_on)),
        ]

    async def _publish(
        self, runtime: Runtime, attempt: Attempt | None = None, *, final: bool = False,
        previous: str | None = None,
    ) -> None:
        """Record the attempts on the first attempt's record; ``attempt``'s policy fields on its own;
        that ``previous`` was retried by it; or that the current attempt's failure is ``final``."""
        commands: list[list[Any]] = [
            ["HSET", keys.run(self.origin), ATTEMPTS, json.dumps([a.to_dict() for a in self.attempts])],
        ]
        if attempt is not None:
            commands.append(["HSET", keys.run(attempt.run_id), *self.policy_fields(attempt)])
        if previous is not None and attempt is not None:
            commands.append(["HSET", keys.run(previous), RETRIED_BY, attempt.run_id])
        if final:
            commands.append(["HSET", keys.run(self._current), FINAL, "1"])
        doing = f"recording the attempts of run {self.origin}"
        replies, attempts = await pipeline(
            runtime.client, commands, retry_for=runtime.settings.reconnect_timeout, doing=doing
        )
        if attempts == 1:
            refused(replies, doing)

    async def after_failure(self, run_id: str, cause: BaseException) -> str:
        """Attempt ``run_id`` failed with ``cause``: the run id to read from now on.

        Starts the next attempt (once, whoever asks first), or raises the
        failure when it is not retried or no attempt is left.  An attempt that
        could not even be started (the broker or the store away) counts as one
        that failed.
        """
        async with self._lock:
            if run_id != self._current:
                return self._current  # another reader (or the watcher) moved on already
            if self._final is not None:
                raise self._final
            runtime = await self.supervisor.runtime()
            failed = next(a for a in reversed(self.attempts) if a.run_id == run_id)
            _ended(failed, cause)
            while True:
                retryable = self.policy.retryable(cause)
                if not retryable or len(self.attempts) > self.policy.retries:
                    final = _exhausted(cause, self.attempts) if retryable else cause
                    self._final = final
                    self._changed.set()
                    try:
                        await self._publish(runtime, final=True)
                    except StoreError as exc:
                        log.warning("run %s: could not record its last attempt: %s", self.origin, exc)
                    raise final
                number = len(self.attempts) + 1
                log.warning(
                    "run %s: attempt %d failed (%s: %s); starting attempt %d of %d",
                    self.origin, number - 1, self.attempts[-1].cause, self.attempts[-1].message,
                    number, self.policy.retries + 1,
                )
                await anyio.sleep(self.policy.delay(number - 1))
                attempt = Attempt(number, f"{self.origin}.{number}", time.time())
                self.attempts.append(attempt)
                try:
                    await self._start(attempt)
                except Exception as exc:
                    # Recorded as that attempt's failure (and raised if it is not retried).
                    _ended(attempt, exc)
                    cause = exc
                    await self._abandon(attempt)
                    continue
                previous, self._current = self._current, attempt.run_id
                self._changed.set()
                self._changed = anyio.Event()
                try:
                    await self._publish(runtime, attempt, previous=previous)
                except StoreError as exc:  # the attempt runs: its readers meet the store's trouble
                    log.warning("run %s: could not record attempt %d: %s", self.origin, number, exc)
                return self._current

    async def _start(self, attempt: Attempt) -> None:
        # The failed attempt may still have processors going (a reader that gave up on an
        # unreachable store): stop them before the next attempt writes its own values.
        previous = self._current
        try:
            if await self.supervisor.run_state(previous) not in (None, *TERMINAL):
                await self.supervisor.cancel(previous)
        except StoreError as exc:
            log.warning("run %s: could not stop attempt %s: %s", self.origin, previous, exc)
        token = record_fields.set(tuple(self.policy_fields(attempt)))
        try:
            await self.supervisor.start_flow(
                self.flow, self.inputs, all_outputs=self.all_outputs, run_id=attempt.run_id, retries=0
            )
        finally:
            record_fields.reset(token)

    async def _abandon(self, attempt: Attempt) -> None:
        """Stop what an attempt that failed to start did start (nobody reads it)."""
        try:
            if await self.supervisor.run_state(attempt.run_id) not in (None, *TERMINAL):
                await self.supervisor.cancel(attempt.run_id)
        except DatagraphError as exc:
            log.warning("run %s: could not stop attempt %s: %s", self.origin, attempt.run_id, exc)

    async def watch(self) -> None:
        """Follow the attempts' states; retry a failure that no reader met first.

        Runs on the event loop's host task group, which it must never end: an
        unexpected error is logged (the run's readers still drive its retries).
        """
        try:
            await self._watch()
        except Exception as exc:
            log.error("run %s: its retries are no longer watched: %r", self.origin, exc, exc_info=exc)

    async def _watch(self) -> None:
        runtime = await self.supervisor.runtime()
        # Failures are noticed within a lease anyway: one poll per heartbeat is plenty,
        # and a run shorter than that costs no poll at all.
        interval = runtime.settings.heartbeat_interval
        deadline = time.monotonic() + runtime.settings.max_run_duration
        while time.monotonic() < deadline and self._final is None:
            with anyio.move_on_after(interval):
                await self._changed.wait()  # a reader moved on, or the run failed for good
            if self._final is not None:
                return
            run_id = self.current
            try:
                ((state, error),), _ = await pipeline(
                    runtime.client, [["HMGET", keys.run(run_id), "state", "error"]],
                    retry_for=runtime.settings.reconnect_timeout,
                    doing=f"watching attempt {run_id} of run {self.origin}",
                )
            except StoreError as exc:
                log.debug("run %s: could not read the state of attempt %s: %s", self.origin, run_id, exc)
                continue
            if isinstance(state, Exception):
                continue
            text = _text(state) if state is not None else None
            if text in ("succeeded", "cancelled"):
                return
            if text == "failed" or text is None:
                cause: BaseException
                if text is None:
                    cause = RunLostError(f"Valkey no longer has attempt {run_id} of run {self.origin}")
                else:
                    cause = failure_error(run_error(error), run_id)
                try:
                    await self.after_failure(run_id, cause)
                except BaseException as exc:
                    if exc is not self._final:
                        raise
                    return  # the run failed for good: its readers raise it


async def start_retried(
    supervisor: Supervisor,
    flow: Flow,
    inputs: Sequence[IOVal[Any]],
    *,
    all_outputs: bool,
    run_id: str | None,
    policy: RetryPolicy,
) -> dict[str, IO[Any]]:
    """``start_flow`` under a retry policy: the IO handles returned follow the attempts.

    A start that fails before the run is recorded (the store away) is tried
    again with the same run id, after the backoff, up to ``policy.retries``
    times; one that fails after (the broker away while dispatching) is the
    first attempt's failure, and the next attempt takes over.
    """
    from .io import IO

    run_id = run_id or uuid.uuid4().hex
    attempts = RunAttempts(
        supervisor, flow, inputs, all_outputs=all_outputs, policy=policy, run_id=run_id
    )
    tries = 0
    while True:
        failure: Exception | None = None
        token = record_fields.set(tuple(attempts.policy_fields(attempts.attempts[0])))
        try:
            await supervisor.start_flow(flow, inputs, all_outputs=all_outputs, run_id=run_id, retries=0)
        except Exception as exc:
            failure = exc
        finally:
            record_fields.reset(token)
        if failure is None:
            await attempts.record_start(await supervisor.runtime())
            break
        if not policy.retryable(failure):
            raise failure
        try:
            recorded = await supervisor.run_state(run_id) is not None
        except StoreError:
            recorded = False
        if recorded:
            await attempts.record_start(await supervisor.runtime())
            await attempts.after_failure(run_id, failure)  # raises when no attempt is left
            break
        tries += 1
        if tries > policy.retries:
            raise failure
        log.warning(
            "run %s could not be started (%s: %s); trying again", run_id, cause_name(failure), failure
        )
        await anyio.sleep(policy.delay(tries))
    topology = flow.topology
    outputs = list(topology.producers) if all_outputs else list(topology.final_outputs)
    reader = keys.OUTPUT_READER if supervisor.settings.telemetry else None
    producers = dict(topology.producers)
    return {
        io: IO(supervisor, run_id, io, reader=reader, producers=producers, attempts=attempts)
        for io in outputs
    }


class RetryingReader:
    """A stream reader that follows a retried run's attempts, delivering each value once.

    It reads like :class:`~datagraph.streams.StreamReader` (``(io, values)``,
    ``(io, END)``) from the current attempt; when that attempt fails with a
    retried cause it reads the next attempt, skipping (and verifying) the
    values of each output it has already delivered.
    """

    def __init__(
        self,
        attempts: RunAttempts,
        ios: Sequence[str],
        *,
        reader: str | None,
        producers: Mapping[str, str],
    ) -> None:
        self._attempts = attempts
        self._ios = list(dict.fromkeys(ios))
        self._reader_name = reader
        self._producers = producers
        self._run_id = attempts.current
        self._stream: StreamReader | None = None
        #: Values of each io handed out so far (over every attempt).
        self._delivered = dict.fromkeys(self._ios, 0)
        #: The attempt whose stream holds every value delivered so far, per io.
        self._source = dict.fromkeys(self._ios, self._run_id)
        #: Per io being verified: values still to skip, their digest so far, the expected one.
        self._skip: dict[str, int] = {}
        self._digest: dict[str, Any] = {}
        self._expected: dict[str, bytes] = {}
        self._ended: set[str] = set()

    async def _open(self) -> StreamReader:
        if self._stream is None:
            runtime = await self._attempts.supervisor.runtime()
            self._stream = StreamReader(
                runtime, self._run_id, [io for io in self._ios if io not in self._ended],
                reader=self._reader_name, producers=self._producers,
            )
        return self._stream

    def __aiter__(self) -> RetryingReader:
        return self

    async def __anext__(self) -> tuple[str, Any]:
        while True:
            stream = await self._open()
            try:
                io, values = await stream.__anext__()
            except StopAsyncIteration:
                raise
            except (ProcessorFailed, StoreError, RunCancelled) as exc:
                await self._follow(exc)
                continue
            if values is END:
                if self._skip.get(io):
                    self._mismatch(io, f"it ended after {self._delivered[io] - self._skip[io]} values")
                self._ended.add(io)
                return io, values
            if self._skip.get(io):
                values = self._verify(io, values)
                if not values:
                    continue
            self._delivered[io] += len(values)
            return io, values

    async def _follow(self, cause: BaseException) -> None:
        failed = self._run_id
        stream, self._stream = self._stream, None
        if stream is not None:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
        # Raises the failure itself when it is not retried (or no attempt is left).
        self._run_id = await self._attempts.after_failure(failed, cause)
        for io in self._ios:
            if io in self._ended or not self._delivered[io]:
                self._skip.pop(io, None)
                if io not in self._ended:
                    self._source[io] = self._run_id
                continue
            self._skip[io] = self._delivered[io]
            self._digest[io] = blake3()
            self._expected[io] = await self._delivered_digest(io)

    async def _delivered_digest(self, io: str) -> bytes:
        """The digest of the values of ``io`` delivered so far, read back from their attempt."""
        runtime = await self._attempts.supervisor.runtime()
        source, wanted = self._source[io], self._delivered[io]
        key = keys.stream(source, io)
        digest = blake3()
        count, start = 0, "-"
        where = f"{io!r} of attempt {source}"
        while count < wanted:
            (reply,), _ = await pipeline(
                runtime.client, [["XRANGE", key, start, "+", "COUNT", "256"]],
                retry_for=runtime.settings.reconnect_timeout,
                doing=f"reading back the values of {where} delivered before a retry",
            )
            refused([reply], f"reading {where}")
            entries = _entries(reply)
            if not entries:
                break
            for entry_id, field, payload in entries:
                start = f"({entry_id}"
                if field != BATCH:
                    continue
                for value in runtime.codec.decode_batch(payload, where)[: wanted - count]:
                    digest.update(_encoded(value))
                    count += 1
            if field == MARKER:
                break
        if count < wanted:
            raise RetryMismatchError(
                f"run {self._attempts.origin} was retried, but the {wanted} values of output {io!r} "
                f"already delivered can no longer be read back from attempt {source} (the store "
                f"lost them: it has {count}), so the new attempt cannot be checked against them; "
                "nothing more is delivered rather than risk a duplicate or a gap",
                run_id=self._attempts.origin,
            )
        return digest.digest()

    def _verify(self, io: str, values: list[Any]) -> list[Any]:
        skip = self._skip[io]
        head, rest = values[:skip], values[skip:]
        digest = self._digest[io]
        for value in head:
            digest.update(_encoded(value))
        self._skip[io] = skip - len(head)
        if self._skip[io] == 0:
            if digest.digest() != self._expected[io]:
                self._mismatch(io, "its values differ")
            self._source[io] = self._run_id
            del self._skip[io]
        return rest

    def _mismatch(self, io: str, how: str) -> None:
        raise RetryMismatchError(
            f"run {self._attempts.origin} was retried after {self._delivered[io]} values of output "
            f"{io!r} were delivered, but attempt {self._run_id} did not produce the same first "
            f"{self._delivered[io]} values ({how}); a retried flow must be deterministic (the same "
            "inputs give the same values in the same order), or run it with retries=0",
            run_id=self._attempts.origin,
        )

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.aclose()


def _encoded(value: Any) -> bytes:
    return pickle.dumps(value, protocol=5)


def _entries(reply: Any) -> list[tuple[str, str, bytes]]:
    """``XRANGE`` entries as (id, field, payload), whatever shape the client returns."""
    items = reply.items() if isinstance(reply, dict) else reply
    out = []
    for raw_id, fields in items:
        if isinstance(fields, dict):
            field, payload = next(iter(fields.items()))
        elif fields and isinstance(fields[0], list | tuple):
            field, payload = fields[0]
        else:
            field, payload = fields[0], fields[1]
        out.append((_text(raw_id), _text(field), payload))
    return out
