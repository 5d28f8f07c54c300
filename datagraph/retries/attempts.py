"""The attempts of one retried run, as the process that started it drives them."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from glide import GlideError

from ..exceptions import DatagraphError, RunCancelled, RunError, RunLostError, StoreError
from ..io import IO
from ..store import keys
from ..store.client import pipeline, refused
from ..store.scripts import TERMINAL
from ..streams import failure_error, run_error
from .policy import (
    ATTEMPT,
    ATTEMPTS,
    FINAL,
    ORIGIN,
    RETRIED_BY,
    RETRIES,
    RETRY_ON,
    STOPPED_FOR_RETRY,
    Attempt,
    RetryPolicy,
    _ended,
    _exhausted,
    _text,
    cause_name,
    log,
    record_fields,
)
from .reader import RetryingReader

__all__ = ["RunAttempts", "StoppedForRetry", "start_retried"]


class StoppedForRetry(RunError):
    """An attempt cancelled by its run's own retries (its readers go on with the next one)."""

if TYPE_CHECKING:
    from ..coordinator import Coordinator
    from ..flow import Flow
    from ..io import IOVal
    from ..runtime import Runtime

class RunAttempts:
    """The attempts of one retried run, as its starting process drives them.

    Shared by the run's IO handles: each reader that meets a failure asks
    :meth:`after_failure` which attempt to read next, and one watcher task
    (:meth:`watch`) does the same for failures nobody reads.
    """

    def __init__(
        self,
        supervisor: Coordinator,
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
            if isinstance(cause, RunCancelled) and await self._stopped_for_retry(runtime, run_id):
                # Cancelled by these retries, not by anyone else: the run goes on.
                cause = StoppedForRetry(
                    f"attempt {run_id} of run {self.origin} was stopped to be retried", run_id=run_id
                )
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
                # Said first, so that wait() sees a cancel it should follow, not the run's end.
                runtime = await self.supervisor.runtime()
                await runtime.client.custom_command(
                    ["HSET", keys.run(previous), STOPPED_FOR_RETRY, "1"]
                )
                await self.supervisor.cancel(previous)
        except (StoreError, GlideError) as exc:
            log.warning("run %s: could not stop attempt %s: %s", self.origin, previous, exc)
        token = record_fields.set(tuple(self.policy_fields(attempt)))
        try:
            await self.supervisor.start_flow(
                self.flow, self.inputs, all_outputs=self.all_outputs, run_id=attempt.run_id, retries=0
            )
        finally:
            record_fields.reset(token)

    async def _stopped_for_retry(self, runtime: Runtime, run_id: str) -> bool:
        try:
            marked = await runtime.client.custom_command(["HGET", keys.run(run_id), STOPPED_FOR_RETRY])
        except GlideError as exc:
            raise StoreError(f"could not read the record of attempt {run_id}: {exc}") from exc
        return marked is not None

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
    supervisor: Coordinator,
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


