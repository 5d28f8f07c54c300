"""The attempts of one retried run, as the process that started it drives them."""

from __future__ import annotations

import json
import time
import uuid
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from glide import GlideError

from ..exceptions import DatagraphError, RunCancelled, RunError, RunLostError, StoreError
from ..io import IO
from ..store import keys
from ..store.client import pipeline, refused
from ..store.client import reply_text as _text
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
    cause_name,
    log,
    record_fields,
)
from .reader import RetryingReader

__all__ = ["RunAttempts", "StoppedForRetry", "start_retried"]


if TYPE_CHECKING:
    from ..coordinator import Coordinator
    from ..flow import Flow
    from ..io import IOVal
    from ..runtime import Runtime


class StoppedForRetry(RunError):
    """An attempt cancelled by its run's own retries (its readers go on with the next one)."""


class RunAttempts:
    """The attempts of one retried run, as its starting process drives them.

    Shared by the run's IO handles: each reader that meets a failure asks
    :meth:`after_failure` which attempt to read next, and the event loop's
    watcher (:class:`_Watcher`) does the same for failures nobody reads.
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
        #: The watcher is retrying a failure of the current attempt.
        self._retrying = False

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
        """Have the event loop's watcher follow this run (its policy is already in its record)."""
        watcher = _WATCHERS.get(runtime)
        if watcher is None:
            watcher = _WATCHERS[runtime] = _Watcher(runtime)
            runtime.host.start_soon(watcher.run, name="datagraph-retries")
        watcher.add(self)

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

    async def retry_watched(self, run_id: str, cause: BaseException) -> None:
        """Retry a failure of attempt ``run_id`` that the watcher found (and no reader met yet)."""
        try:
            await self.after_failure(run_id, cause)
        except Exception as exc:
            if exc is not self._final:  # the final failure is what the run's readers raise
                log.error("run %s: could not retry attempt %s: %r", self.origin, run_id, exc, exc_info=exc)
        finally:
            self._retrying = False


#: The watcher of each event loop's runtime.
_WATCHERS: weakref.WeakKeyDictionary[Runtime, _Watcher] = weakref.WeakKeyDictionary()


class _Watcher:
    """Follows the retried runs started on one event loop; retries a failure no reader met first.

    One task for every such run, polling their current attempts' states in one
    pipeline per heartbeat (failures are noticed within a lease anyway): a run
    shorter than a heartbeat costs one command in a shared round trip and no
    task of its own.  The task ends when it has no run left to follow.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        #: Each followed run, with the time past which it is given up (max_run_duration).
        self.runs: dict[RunAttempts, float] = {}

    def add(self, attempts: RunAttempts) -> None:
        self.runs[attempts] = time.monotonic() + self.runtime.settings.max_run_duration

    async def run(self) -> None:
        """The task, on the runtime's host task group, which it must never end."""
        try:
            await self._follow()
        except Exception as exc:  # the runs' readers still drive their retries
            log.error("retried runs of this event loop are no longer watched: %r", exc, exc_info=exc)
        finally:
            if _WATCHERS.get(self.runtime) is self:
                del _WATCHERS[self.runtime]

    async def _follow(self) -> None:
        settings = self.runtime.settings
        while self.runs:
            await anyio.sleep(settings.heartbeat_interval)
            now = time.monotonic()
            for attempts, deadline in list(self.runs.items()):
                if attempts._final is not None or now >= deadline:
                    del self.runs[attempts]
            # A run whose reader (or this watcher) is moving it on is looked at next time.
            polled = [a for a in self.runs if not a._retrying and not a._lock.locked()]
            if not polled:
                continue
            run_ids = [a.current for a in polled]
            try:
                replies, _ = await pipeline(
                    self.runtime.client, [["HMGET", keys.run(r), "state", "error"] for r in run_ids],
                    retry_for=settings.reconnect_timeout,
                    doing=f"watching the attempts of {len(polled)} retried run(s)",
                )
            except StoreError as exc:
                log.debug("could not read the states of retried runs: %s", exc)
                continue
            for attempts, run_id, reply in zip(polled, run_ids, replies, strict=True):
                if isinstance(reply, Exception) or attempts.current != run_id:
                    continue
                state, error = reply
                text = _text(state) if state is not None else None
                if text in ("succeeded", "cancelled"):
                    self.runs.pop(attempts, None)
                elif text == "failed" or text is None:
                    cause: BaseException
                    if text is None:
                        cause = RunLostError(
                            f"Valkey no longer has attempt {run_id} of run {attempts.origin}"
                        )
                    else:
                        cause = failure_error(run_error(error), run_id)
                    attempts._retrying = True
                    self.runtime.host.start_soon(
                        attempts.retry_watched, run_id, cause, name=f"datagraph-retry-{attempts.origin}"
                    )


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


