"""Every error Datagraph raises derives from :class:`DatagraphError`.

The tree::

    DatagraphError
    ├── ConfigError              bad settings, bad ``redis_config``, no supervisor attached
    ├── ProcessorError           a processor spec or function that cannot be used
    │   └── DependencyError      a parameter that is neither an input nor injectable
    ├── FlowError                a flow that cannot run as declared
    │   ├── CycleError           processors that depend on each other in a loop
    │   ├── DuplicateOutputError an IO produced by more than one processor
    │   ├── UnresolvedFlowError  a flow started before ``resolve()``
    │   ├── MissingInputError    floating inputs that ``start_flow`` was not given
    │   ├── UnknownInputError    inputs given to ``start_flow`` that the flow never reads
    │   └── UnknownProcessorError a processor nobody implements
    ├── RunError                 a run that did not end well
    │   ├── ProcessorFailed      a processor raised; carries its name, type and message
    │   ├── RunCancelled         the run was cancelled
    │   ├── StreamIdleTimeout    a stream's producer went silent for too long
    │   ├── EmptyStreamError     ``first()`` on a stream that ended with no value
    │   ├── RerunError           a run that cannot be run again (still running, inputs not kept)
    │   ├── DispatchError        a processor that could not be handed to a worker (the broker away)
    │   ├── WorkerStopping       a worker asked to stop handed its processor over (retried)
    │   ├── RetryMismatchError   a retried attempt that did not repeat the values already
    │   │                        delivered (the flow is not deterministic)
    │   └── BadValueError        a yielded value that cannot be sent (undeclared IO,
    │                            not serialisable, too large)
    └── StoreError               Valkey is unreachable, refused a command, or lost data
        ├── RunLostError         the run's keys are gone (expired, or the store lost them)
        └── TamperedPayloadError a stream entry whose signature does not verify
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BadValueError",
    "ConfigError",
    "CycleError",
    "DatagraphError",
    "DependencyError",
    "DispatchError",
    "DuplicateOutputError",
    "EmptyStreamError",
    "FlowError",
    "MissingInputError",
    "ProcessorError",
    "ProcessorFailed",
    "RerunError",
    "RetryMismatchError",
    "RunCancelled",
    "RunError",
    "RunLostError",
    "StoreError",
    "StreamIdleTimeout",
    "TamperedPayloadError",
    "UnknownInputError",
    "UnknownProcessorError",
    "UnresolvedFlowError",
    "WorkerStopping",
]


class DatagraphError(Exception):
    """Base class of every Datagraph error."""

    #: The attempts of a retried run that failed for good (``datagraph.retries.Attempt``),
    #: oldest first; empty for a run that was not retried.
    attempts: tuple[Any, ...] = ()


class ConfigError(DatagraphError):
    """Settings or store configuration that cannot be used."""


class ProcessorError(DatagraphError):
    """A processor spec or implementation that cannot be used."""


class DependencyError(ProcessorError):
    """A processor parameter that is neither an input nor resolvable by injection."""


class FlowError(DatagraphError):
    """A flow that cannot run as declared."""


class CycleError(FlowError):
    """Processors that read each other's outputs in a loop."""

    def __init__(self, message: str, cycles: list[list[str]]) -> None:
        super().__init__(message)
        self.cycles = cycles


class DuplicateOutputError(FlowError):
    """An IO produced by more than one processor."""


class UnresolvedFlowError(FlowError):
    """A flow used before ``resolve()`` was called."""


class MissingInputError(FlowError):
    """Floating inputs of a flow that ``start_flow`` was not given."""


class UnknownInputError(FlowError):
    """Inputs given to ``start_flow`` that no processor of the flow reads."""


class UnknownProcessorError(FlowError):
    """A processor that no process implements (or that this executor cannot run)."""


class RunError(DatagraphError):
    """A run that did not complete normally."""

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id


class RerunError(RunError):
    """A run that cannot be run again: it has not ended, or its inputs were not kept."""


class DispatchError(RunError):
    """A processor of a starting run could not be handed to a worker (e.g. the broker is away)."""


class WorkerStopping(RunError):
    """A worker asked to stop (a warm shutdown) handed over a processor still running.

    The processor's run fails with this cause after the ``shutdown_grace``
    setting, and a run with a retry policy is started again elsewhere.
    """


class RetryMismatchError(RunError):
    """A retried run's new attempt did not start with the values already delivered.

    Exactly-once delivery across attempts needs a deterministic flow: the same
    inputs give the same values in the same order.
    """


class ProcessorFailed(RunError):
    """A processor of the run raised.

    ``processor`` names the processor that raised first; ``error_type``,
    ``error_message`` and ``traceback`` describe what it raised.
    """

    def __init__(
        self,
        processor: str,
        error_type: str,
        error_message: str,
        traceback: str = "",
        *,
        run_id: str | None = None,
        worker: str | None = None,
    ) -> None:
        where = f" on worker {worker}" if worker else ""
        super().__init__(
            f"processor {processor!r} failed{where}: {error_type}: {error_message}",
            run_id=run_id,
        )
        self.processor = processor
        self.error_type = error_type
        self.error_message = error_message
        self.traceback = traceback
        self.worker = worker


class RunCancelled(RunError):
    """The run was cancelled before it completed."""


class StreamIdleTimeout(RunError):
    """A stream's producer wrote nothing for longer than the idle timeout."""


class EmptyStreamError(RunError):
    """``first()`` was called on a stream that ended without a value."""


class BadValueError(RunError):
    """A yielded value that cannot be written to its stream."""


class StoreError(DatagraphError):
    """Valkey is unreachable, refused a command, or lost the run's data."""


class RunLostError(StoreError):
    """The run's keys are gone: expired, or lost by a store restarted without persistence."""


class TamperedPayloadError(StoreError):
    """A stream entry whose signature does not verify; it is never unpickled."""
