"""Executors run "processor X of run R" somewhere: in-process, or through Celery."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Executor
from .local import LocalExecutor

if TYPE_CHECKING:
    from .celery import CeleryExecutor

__all__ = ["CeleryExecutor", "Executor", "LocalExecutor"]


def __getattr__(name: str) -> Any:
    # Celery is optional: import it only when asked for.
    if name == "CeleryExecutor":
        from .celery import CeleryExecutor

        return CeleryExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
