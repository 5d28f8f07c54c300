"""A processor whose module imports in the caller but not in a ProcessExecutor worker."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

from datagraph import IO, IOVal, Processor

_main = getattr(sys.modules["__main__"], "__spec__", None)
if getattr(_main, "name", None) == "datagraph.executors.process_worker":
    raise RuntimeError("this module needs a licence server only the caller can reach")

licensed = Processor("x_licensed", ["lic_in"], ["lic_out"])


@licensed
async def _licensed(lic_in: IO[int]) -> AsyncIterator[IOVal[int]]:
    yield IOVal("lic_out", await lic_in.first())
