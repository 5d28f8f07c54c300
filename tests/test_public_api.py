"""The package root exports exactly the public API, and needs no web stack."""

from __future__ import annotations

import subprocess
import sys

import datagraph
from datagraph import exceptions


def test_all_is_exactly_the_public_api() -> None:
    assert sorted(datagraph.__all__) == sorted(
        ["Depends", "IO", "IOBatch", "IOVal", "LocalExecutor", "Flow", "Supervisor", "Processor", "Executor"]
    )
    for name in datagraph.__all__:
        assert getattr(datagraph, name) is not None


def test_every_exception_derives_from_one_root() -> None:
    for name in exceptions.__all__:
        error = getattr(exceptions, name)
        assert issubclass(error, exceptions.DatagraphError), name
        assert name in (exceptions.__doc__ or ""), f"{name} is missing from the documented tree"


def test_importing_datagraph_does_not_import_the_web_stack() -> None:
    code = (
        "import sys, datagraph, datagraph.telemetry, datagraph.cli; "
        "loaded = {'fastapi', 'jinja2', 'sse_starlette', 'celery', 'web'} & set(sys.modules); "
        "print(sorted(loaded))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
