"""Every key name Datagraph uses, in one place.

A run's keys share the hash tag ``{run_id}`` so that one run lives in one
cluster slot and can be read in one pipeline.
"""

from __future__ import annotations

__all__ = [
    "EVENTS",
    "FLOWS",
    "PROCESSORS",
    "RUNS",
    "WORKERS",
    "history",
    "history_coarse",
    "history_names",
    "pos",
    "run",
    "run_keys",
    "stats",
    "stream",
    "worker",
]

PREFIX = "dg"

#: Sorted set of run ids scored by start time.
RUNS = f"{PREFIX}:runs"
#: Hash: processor name -> JSON registration.
PROCESSORS = f"{PREFIX}:processors"
#: Sorted set of worker ids scored by last heartbeat.
WORKERS = f"{PREFIX}:workers"
#: Capped stream of lifecycle events.
EVENTS = f"{PREFIX}:events"
#: Hash: flow name -> JSON flow saved from the designer.
FLOWS = f"{PREFIX}:flows"


def _run_prefix(run_id: str) -> str:
    return f"{PREFIX}:{{{run_id}}}"


def run(run_id: str) -> str:
    """Hash: the run's record (state, times, plan, error)."""
    return f"{_run_prefix(run_id)}:run"


def stream(run_id: str, io: str) -> str:
    """Stream: the values of one IO; each entry carries a batch."""
    return f"{_run_prefix(run_id)}:io:{io}"


def pos(run_id: str) -> str:
    """Hash: values consumed (and last entry id) per ``reader/io``."""
    return f"{_run_prefix(run_id)}:pos"


def stats(run_id: str) -> str:
    """Hash: counters and states per IO and per processor."""
    return f"{_run_prefix(run_id)}:stats"


def history(run_id: str) -> str:
    """Stream: one sample of the run's counters per second (the last 15 minutes).

    Entry ids are the store's clock in milliseconds, so ``XRANGE`` reads by time.
    """
    return f"{_run_prefix(run_id)}:hist"


def history_coarse(run_id: str) -> str:
    """Stream: one sample of the run's counters per minute, for the run's whole life."""
    return f"{_run_prefix(run_id)}:hist:60"


def history_names(run_id: str) -> str:
    """List: the names of the values a history sample holds, in order (it only grows)."""
    return f"{_run_prefix(run_id)}:hist:names"


def rerun(run_id: str) -> str:
    """Hash: the run's inputs kept for running it again, its origin and its re-runs."""
    return f"{_run_prefix(run_id)}:rerun"


def run_keys(run_id: str, ios: list[str]) -> list[str]:
    """Every key a run owns."""
    return [
        run(run_id),
        pos(run_id),
        stats(run_id),
        rerun(run_id),
        history(run_id),
        history_coarse(run_id),
        history_names(run_id),
        *(stream(run_id, io) for io in ios),
    ]


def notification(claim: str) -> str:
    """String: the dashboard process that claimed sending notification ``claim``."""
    return f"{PREFIX}:notified:{claim}"


def worker(worker_id: str) -> str:
    """Hash: one worker's description and counters."""
    return f"{PREFIX}:worker:{worker_id}"


def pos_field(reader: str, io: str) -> str:
    return f"{reader}/{io}"


def pos_id_field(reader: str, io: str) -> str:
    return f"{reader}/{io}#id"


def pos_done_field(reader: str, io: str) -> str:
    """Set once ``reader`` has finished: it no longer holds ``io``'s writer back."""
    return f"{reader}/{io}#done"


# -- telemetry -------------------------------------------------------------
# Registrations and the read side of telemetry (datagraph/registration.py,
# datagraph/telemetry.py).

#: Hash: ``<processor>/<worker id>`` -> unix time that worker last published
#: the processor.  Kept apart from the registrations in ``PROCESSORS`` so that
#: several workers can implement one processor without read-modify-write.
IMPLEMENTERS = f"{PREFIX}:implementers"

#: Reader name under which the caller of ``start_flow`` publishes its
#: positions on the run's outputs (``<OUTPUT_READER>/<io>`` in ``pos``).
OUTPUT_READER = "(output)"


def implementer_field(processor: str, worker_id: str) -> str:
    """Field of ``IMPLEMENTERS``; processor names never contain ``/``."""
    return f"{processor}/{worker_id}"


def split_implementer_field(field: str) -> tuple[str, str]:
    """``(processor, worker id)`` of an ``IMPLEMENTERS`` field."""
    processor, _, worker_id = field.partition("/")
    return processor, worker_id
