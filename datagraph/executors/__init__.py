"""Executors run "processor X of run R" somewhere: in-process, in worker processes, or through Celery.

``docs/executors.md`` describes the protocol: what ``check``, ``dispatch`` and
``aclose`` must do, and the two calls a third-party executor makes
(:func:`record_dispatch` on the caller's side, :func:`run_dispatched` on the
worker's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Executor
from .local import LocalExecutor
from .process import ProcessExecutor
from .worker import fail_dispatch, record_dispatch, run_dispatched

if TYPE_CHECKING:
    from .celery import CeleryExecutor

__all__ = [
    "CeleryExecutor",
    "Executor",
    "LocalExecutor",
    "ProcessExecutor",
    "fail_dispatch",
    "record_dispatch",
    "run_dispatched",
]


def __getattr__(name: str) -> Any:
    # Celery is optional: import it only when asked for.
    if name == "CeleryExecutor":
        from .celery import CeleryExecutor

        return CeleryExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
