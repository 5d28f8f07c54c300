"""The processes ``datagraph demo`` runs beside its own: Valkey, the Celery worker,
and the dashboard's server thread.

Each child process is started so that it cannot outlive this one: it is in a
process group of its own (so it and its children are stopped together) and,
on Linux, gets ``SIGKILL`` from the kernel when this process dies
(``PR_SET_PDEATHSIG``), even if no cleanup code runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ..embedded import die_with_parent

__all__ = ["DashboardServer", "DemoWorker"]

log = logging.getLogger("datagraph.demo")

#: Pool slots of the demo worker: a processor holds one for as long as it runs,
#: so this is how many processors can run at once (the continuous run takes 7).
WORKER_CONCURRENCY = 48
#: The demo's Celery service module.
SERVICE = "datagraph.demo.service"
#: Seconds a finished demo run is kept: the continuous run starts a new run every
#: ten minutes, so an hour's worth keeps the store small however long the demo runs.
RETENTION = 3600.0
#: Missed heartbeats before a worker counts as dead: more than the default, as a
#: laptop busy with a browser and the demo can stall the worker for seconds.
HEARTBEAT_MISSES = 5


class DemoWorker:
    """The ``celery worker`` subprocess of the demo service, in a process group of its own."""

    def __init__(
        self,
        store_url: str,
        broker_url: str,
        secret: str,
        *,
        concurrency: int = WORKER_CONCURRENCY,
        retention: float = RETENTION,
        log_dir: Path | None = None,
    ) -> None:
        from .service import BROKER_ENV

        self.name = f"demo-{uuid.uuid4().hex[:6]}"
        self.env = {
            **os.environ,
            "DATAGRAPH_REDIS_URL": store_url,
            BROKER_ENV: broker_url,
            "DATAGRAPH_SECRET": secret,
            "DATAGRAPH_RETENTION": repr(retention),
            "DATAGRAPH_HEARTBEAT_MISSES": str(HEARTBEAT_MISSES),
        }
        # The options docs/celery.md prescribes for a Datagraph service: a
        # processor holds its pool slot while it streams, so a worker must not
        # reserve tasks it has no free slot for.  A thread pool runs all
        # processors on one event loop, which is what a demo on a laptop wants.
        self.argv = [
            sys.executable, "-m", "celery", "-A", SERVICE, "worker",
            "--pool=threads", f"--concurrency={concurrency}",
            "--prefetch-multiplier=1", "--disable-prefetch",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--loglevel=WARNING", "-n", f"{self.name}@%h",
        ]
        handle, path = tempfile.mkstemp(prefix=f"datagraph-{self.name}-", suffix=".log", dir=log_dir)
        os.close(handle)
        self.log_path = Path(path)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=die_with_parent(), start_new_session=True,
            )

    def check(self) -> None:
        """Raise if the worker exited."""
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"the demo worker exited with status {self.process.returncode}:\n{self.tail()}"
            )

    def tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, timeout: float = 10.0) -> None:
        """Warm shutdown (SIGTERM); SIGKILL to the whole group if it takes too long."""
        process, self.process = self.process, None
        if process is None:
            return
        try:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.warning("the demo worker did not stop within %.0fs; killing it", timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # whatever is left in its group
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)


class DashboardServer:
    """uvicorn serving the dashboard app from a thread (it has an event loop of its own)."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
        except OSError as exc:
            self.socket.close()
            raise RuntimeError(f"cannot serve the dashboard on {host}:{port}: {exc.strerror}") from exc
        self.host, self.port = host, int(self.socket.getsockname()[1])
        config = uvicorn.Config(
            app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2, access_log=False
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, name="datagraph-dashboard"
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the dashboard did not start (see the log above)")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(10)
        self.socket.close()
