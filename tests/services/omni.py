"""Service "omni": every processor of the executor-agnostic suite (tests/test_executors.py)."""

from __future__ import annotations

from tests import executor_processors  # noqa: F401  (decorates the processors it implements)

from ._service import attach

app = attach("omni", backend="asyncio")
