"""Every key name Datagraph uses, in one place.

A run's keys share the hash tag ``{run_id}`` so that one run lives in one
cluster slot and can be read in one pipeline.  The global keys (``RUNS``,
``WORKERS``, ``PROCESSORS``, ...) each hash to a slot of their own: on a
Valkey Cluster no script or multi-key command may mix them with each other or
with a run's keys (a non-atomic batch may: see ``store.client.pipeline``).

Every key starts with the process's **namespace** (default ``dg``, the
``namespace`` setting / ``DATAGRAPH_NAMESPACE``): deployments that share one
store (a Valkey Cluster has only database 0) stay apart by using different
namespaces.  One process uses one namespace: ``Supervisor.attach``, ``datagraph
status`` and ``datagraph dashboard`` select it with :func:`use_namespace`; the
names below (``RUNS``, ``run(...)``, ...) are computed from it when read.
"""

from __future__ import annotations

import re

# The global keys (RUNS, WORKERS, PROCESSORS, IMPLEMENTERS, EVENTS, FLOWS) are
# module attributes computed by __getattr__, so they are not listed here.
__all__ = [
    "DEFAULT_NAMESPACE",
    "check_namespace",
    "history",
    "history_coarse",
    "history_names",
    "namespace",
    "pos",
    "run",
    "run_keys",
    "stats",
    "stream",
    "use_namespace",
    "worker",
]

DEFAULT_NAMESPACE = "dg"
_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_namespace = DEFAULT_NAMESPACE

#: The global keys, by attribute name: ``RUNS`` is ``"<namespace>:runs"``.
_GLOBAL = {
    #: Sorted set of run ids scored by start time.
    "RUNS": "runs",
    #: Hash: processor name -> JSON registration.
    "PROCESSORS": "processors",
    #: Sorted set of worker ids scored by last heartbeat.
    "WORKERS": "workers",
    #: Capped stream of lifecycle events.
    "EVENTS": "events",
    #: Hash: flow name -> JSON flow saved from the designer.
    "FLOWS": "flows",
    #: Hash: ``<processor>/<worker id>`` -> unix time that worker last published
    #: the processor.  Kept apart from the registrations in ``PROCESSORS`` so that
    #: several workers can implement one processor without read-modify-write.
    "IMPLEMENTERS": "implementers",
}


def check_namespace(name: str) -> str:
    """``name`` if it can prefix keys; else ``ValueError`` saying what is allowed."""
    if not isinstance(name, str) or not _NAMESPACE.fullmatch(name):
        raise ValueError(
            f"namespace {name!r} is not valid: use 1 to 64 letters, digits, '_', '.' or '-' "
            f"(the default is {DEFAULT_NAMESPACE!r})"
        )
    return name


def use_namespace(name: str) -> None:
    """Make every key name of this process start with ``name``."""
    global _namespace
    _namespace = check_namespace(name)


def namespace() -> str:
    """The namespace this process's keys start with."""
    return _namespace


def __getattr__(name: str) -> str:
    suffix = _GLOBAL.get(name)
    if suffix is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return f"{_namespace}:{suffix}"


# A run's keys start with ``<namespace>:{<run id>}`` (the hash tag puts them in one
# cluster slot), spelt out in each function below: they are built dozens of times per
# run, and a helper for the prefix was as many calls again.


def run(run_id: str) -> str:
    """Hash: the run's record (state, times, plan, error)."""
    return f"{_namespace}:{{{run_id}}}:run"


def stream(run_id: str, io: str) -> str:
    """Stream: the values of one IO; each entry carries a batch."""
    return f"{_namespace}:{{{run_id}}}:io:{io}"


def pos(run_id: str) -> str:
    """Hash: values consumed (and last entry id) per ``reader/io``."""
    return f"{_namespace}:{{{run_id}}}:pos"


def stats(run_id: str) -> str:
    """Hash: counters and states per IO and per processor."""
    return f"{_namespace}:{{{run_id}}}:stats"


def history(run_id: str) -> str:
    """Stream: one sample of the run's counters per second (the last 15 minutes).

    Entry ids are the store's clock in milliseconds, so ``XRANGE`` reads by time.
    """
    return f"{_namespace}:{{{run_id}}}:hist"


def history_coarse(run_id: str) -> str:
    """Stream: one sample of the run's counters per minute, for the run's whole life."""
    return f"{_namespace}:{{{run_id}}}:hist:60"


def history_names(run_id: str) -> str:
    """List: the names of the values a history sample holds, in order (it only grows)."""
    return f"{_namespace}:{{{run_id}}}:hist:names"


def rerun(run_id: str) -> str:
    """Hash: the run's inputs kept for running it again, its origin and its re-runs."""
    return f"{_namespace}:{{{run_id}}}:rerun"


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
    return f"{_namespace}:notified:{claim}"


def worker(worker_id: str) -> str:
    """Hash: one worker's description and counters."""
    return f"{_namespace}:worker:{worker_id}"


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
