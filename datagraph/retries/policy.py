"""Retry policies and the attempt records of retried runs (read and written)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..exceptions import (
    ConfigError,
    DatagraphError,
    ProcessorFailed,
    RetryMismatchError,
    RunCancelled,
    RunLostError,
    StoreError,
)
from ..store import keys
from ..store.client import pipeline, refused
from ..store.client import reply_text as _text
from ..streams import run_error

if TYPE_CHECKING:
    from ..context import Context
    from ..flow import Flow

__all__ = [
    "RETRIED_CAUSES",
    "Attempt",
    "RetryPolicy",
    "attempts_from",
    "cause_name",
    "follow_attempt",
    "pending_retry",
    "record_fields",
]


log = logging.getLogger("datagraph.retries")

#: Fields an attempt of a retried run adds to its record when ``start_flow`` creates it
#: (its policy), so that no round trip of its own is needed.
record_fields: ContextVar[tuple[str, ...]] = ContextVar("datagraph_record_fields", default=())

#: Causes of failure that are not the user's code: always retried under a policy.
RETRIED_CAUSES = frozenset(
    {
        "WorkerLost", "WorkerStopping", "DispatchTimeout", "DispatchError", "WritesLost",
        "StoreError", "RunLostError", "StoppedForRetry",
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
STOPPED_FOR_RETRY = "stopped_for_retry"



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

    (Or a cancelled one: an attempt still running when its retries gave up on it,
    e.g. after a reader lost the store, is cancelled before the next one starts.)

    True when another attempt already replaced it, or its cause is retried and
    attempts remain and no final decision was recorded: alerts wait for the last attempt.
    """
    state = fields.get("state")
    if state not in ("failed", "cancelled"):
        return False
    if fields.get(RETRIED_BY):
        return True
    if fields.get(FINAL):
        return False
    if fields.get(STOPPED_FOR_RETRY):
        return True  # cancelled (or failed) by the retries themselves, the next attempt starting
    if state != "failed" or not fields.get(RETRIES):
        return False
    try:
        attempt, retries = int(fields.get(ATTEMPT) or 1), int(fields[RETRIES])
        retry_on = set(json.loads(fields.get(RETRY_ON) or "[]"))
    except (ValueError, TypeError):
        return False
    cause = str(run_error(fields.get("error")).get("type", ""))
    return attempt <= retries and (cause in RETRIED_CAUSES or cause in retry_on)


async def follow_attempt(supervisor: Context, run_id: str) -> str | None:
    """For a failed (or cancelled) run: the attempt that replaced it, "" while one is about to,
    or None.

    None means the failure is final (not retried, or no attempt left).
    """
    runtime = await supervisor.runtime()
    doing = f"reading the attempts of run {run_id}"
    names = ("state", "error", ATTEMPT, RETRIES, RETRY_ON, RETRIED_BY, FINAL, STOPPED_FOR_RETRY)
    (reply,), _ = await pipeline(
        runtime.client,
        [["HMGET", keys.run(run_id), *names]], retry_for=runtime.settings.reconnect_timeout, doing=doing,
    )
    refused([reply], doing)
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


