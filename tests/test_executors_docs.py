"""docs/executors.md's ProcessExecutor example runs as printed (a module of processors, a script)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_process_executor_example_runs_as_printed(tmp_path: Path, valkey_url: str) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "executors.md").read_text(), re.S)
    processors, main = blocks[0], blocks[1]
    assert processors.startswith("# myflow/processors.py") and main.startswith("# main.py")
    (tmp_path / "myflow").mkdir()
    (tmp_path / "myflow" / "__init__.py").write_text("")
    (tmp_path / "myflow" / "processors.py").write_text(processors)
    (tmp_path / "main.py").write_text(main)
    env = {**os.environ, "DATAGRAPH_REDIS_URL": valkey_url, "DATAGRAPH_SECRET": "docs-example"}
    result = subprocess.run(
        [sys.executable, "main.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [int(line.strip("()").split(",")[0]) for line in lines] == list(range(100))
