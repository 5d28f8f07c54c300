"""``datagraph dashboard`` in a subprocess, as an operator starts it, for the on-call tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Seconds the dashboard may take to answer /healthz, and to stop after SIGINT.
START_DEADLINE = 45.0
STOP_DEADLINE = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class DashboardProcess:
    url: str
    process: subprocess.Popen[str]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def dashboard_process(
    *args: str, env: dict[str, str] | None = None, log: Path, app: str | None = "tests.apps.oncall"
) -> Iterator[DashboardProcess]:
    """A dashboard on a free port (``--app app`` unless None); its output goes to ``log``."""
    port = free_port()
    command = [sys.executable, "-m", "datagraph", "dashboard", "--port", str(port), *args]
    if app:
        command += ["--app", app]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DATAGRAPH_")}
    environment.update(env or {})
    environment["PYTHONUNBUFFERED"] = "1"
    with log.open("w") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            env=environment, cwd=ROOT,
        )
    running = DashboardProcess(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + START_DEADLINE
        while True:
            try:
                if httpx.get(f"{running.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"the dashboard did not start within {START_DEADLINE:.0f}s "
                    f"(exit {process.poll()}):\n{running.output()[-4000:]}",
                    pytrace=False,
                )
            time.sleep(0.1)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def wait_for(predicate: object, deadline: float, what: str, interval: float = 0.1) -> None:
    """Poll ``predicate()`` until it is true; fail naming ``what`` after ``deadline`` seconds."""
    assert callable(predicate)
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"{what} did not happen within {deadline:.0f}s", pytrace=False)
        time.sleep(interval)
