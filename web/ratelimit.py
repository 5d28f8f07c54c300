"""Failed logins per client: a handful a minute, then 429 until the oldest ages out.

One :class:`LoginLimiter` per dashboard process (each process of a
deployment counts its own clients). A wrong token presented in any way (login
form, ``Authorization: Bearer``, ``?token=``) counts; a stale session cookie
does not (it only sends its owner to the login form). While a client is over
its budget, its token attempts are answered 429 with ``Retry-After``, right
or wrong, so guessing gains nothing from speed.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque

__all__ = ["LoginLimiter"]


class LoginLimiter:
    """At most ``limit`` failed attempts per client within ``window`` seconds."""

    def __init__(self, limit: int = 5, window: float = 60.0, *, max_clients: int = 10_000) -> None:
        if limit < 1 or window <= 0:
            raise ValueError(f"a login limit needs limit >= 1 and window > 0, got {limit} and {window}")
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str, now: float) -> deque[float] | None:
        failures = self._failures.get(client)
        if failures is None:
            return None
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return None
        return failures

    def retry_after(self, client: str, now: float | None = None) -> int | None:
        """Seconds until ``client`` may try again, or None when it may now."""
        now = time.monotonic() if now is None else now
        failures = self._recent(client, now)
        if failures is None or len(failures) < self.limit:
            return None
        return max(1, math.ceil(failures[0] + self.window - now))

    def failed(self, client: str, now: float | None = None) -> None:
        """Count a failed attempt of ``client``."""
        now = time.monotonic() if now is None else now
        failures = self._recent(client, now)
        if failures is None:
            failures = self._failures[client] = deque(maxlen=self.limit)
            while len(self._failures) > self.max_clients:  # bounded memory: forget the oldest
                self._failures.popitem(last=False)
        self._failures.move_to_end(client)
        failures.append(now)
