"""Webhooks: tell on-call when something breaks.

``datagraph dashboard --notify-url URL`` (repeatable; ``DATAGRAPH_NOTIFY_URLS``,
comma-separated) makes the dashboard POST a JSON object to every URL on:

=====================  =====================================================
``run.failed``         a run failed (``run_id``, ``flow``, ``processor``, ``worker``)
``run.stuck``          a running run wrote nothing for ``--stuck-after`` seconds
``edge.backpressured`` an edge stayed red (above 85 % of its backpressure limit)
                       for ``--notify-after`` seconds (``run_id``, ``flow``, ``io``,
                       ``source``, ``target``)
``worker.offline``     a worker stopped heart-beating without stopping on purpose
                       (``worker``)
=====================  =====================================================

Every payload also has ``url`` (the dashboard page to open), ``text`` (one
line, so a Slack or Mattermost incoming webhook shows it as is), ``at`` (unix
time) and ``dashboard`` (the dashboard's base URL).

Once per event, whatever the number of dashboard processes on the store: a
process claims an event in Valkey (``SET NX``) before it sends it. A failed
POST is retried with exponential backoff (0.5 s, 1 s, 2 s, ... for up to
``max_attempts``), then counted as failed and logged. A :class:`Notifier` runs
in the dashboard's lifespan, polling the store every ``interval`` seconds in
a task of its own; sending happens in further tasks, so no page ever waits
for a webhook.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import anyio
import httpx
from glide import GlideError as GlideBaseError

from datagraph.exceptions import ConfigError, StoreError
from datagraph.snapshots import RunSnapshot
from datagraph.store import keys

from .overlay import EDGE_FILL_RED_ABOVE

if TYPE_CHECKING:
    from .dashboard import Dashboard

__all__ = ["NOTIFY_URLS_ENV", "Notification", "Notifier", "parse_notify_urls"]

log = logging.getLogger("web.notify")

NOTIFY_URLS_ENV = "DATAGRAPH_NOTIFY_URLS"
#: Seconds a claim is kept (an event older than that is not looked at again).
CLAIM_TTL = 7 * 24 * 3600
#: Failed runs that ended this long before the notifier started are not announced.
STARTUP_GRACE = 300.0
#: Runs looked at per poll.
RECENT_RUNS = 200
RUNNING_RUNS = 100


def parse_notify_urls(values: Sequence[str]) -> list[str]:
    """Webhook URLs from ``--notify-url`` values (each may hold several, comma-separated)."""
    urls = [u.strip() for value in values for u in value.split(",") if u.strip()]
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"notify URL {url!r} is not an http(s) URL; give the webhook's full address, "
                "e.g. https://hooks.slack.com/services/..."
            )
    return urls


@dataclass(frozen=True)
class Notification:
    """One event to announce: ``claim`` identifies it across dashboard processes."""

    event: str
    claim: str
    payload: dict[str, Any]


class Notifier:
    """Polls the store for events and POSTs each one, once, to every URL."""

    def __init__(
        self,
        dashboard: Dashboard,
        urls: Sequence[str],
        *,
        public_url: str,
        after: float = 30.0,
        interval: float = 2.0,
        max_attempts: int = 6,
        timeout: float = 10.0,
    ) -> None:
        if after < 0 or interval <= 0 or max_attempts < 1:
            raise ConfigError(
                f"notifications need --notify-after >= 0, a positive interval and at least one attempt; "
                f"got {after}, {interval} and {max_attempts}"
            )
        self.dashboard = dashboard
        self.urls = list(urls)
        self.public_url = public_url.rstrip("/")
        self.after = after
        self.interval = interval
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.started = time.time()
        #: Events this process claimed (and so sent), newest last.
        self.claimed: list[str] = []
        #: (run, io, target) -> when the edge was first seen red, continuously since.
        self._red_since: dict[tuple[str, str, str], float] = {}
        self._limiter = anyio.CapacityLimiter(8)

    # -- the loop -------------------------------------------------------------------

    async def run(self) -> None:
        """Poll and send until cancelled (the dashboard's lifespan owns this task)."""
        failing = False
        async with httpx.AsyncClient(timeout=self.timeout) as client, anyio.create_task_group() as tg:
            while True:
                try:
                    for notification in await self.poll():
                        if await self.claim(notification):
                            for url in self.urls:
                                tg.start_soon(self._deliver, client, url, notification)
                except (StoreError, GlideBaseError) as exc:
                    if not failing:
                        log.warning("notifications: could not read the store: %s", exc)
                    failing = True
                else:
                    failing = False
                await anyio.sleep(self.interval)

    async def claim(self, notification: Notification) -> bool:
        """Whether this process is the one to send it (first to claim it in the store)."""
        key = keys.notification(notification.claim)
        try:
            reply = await self.dashboard.client.custom_command(
                ["SET", key, repr(time.time()), "NX", "EX", str(CLAIM_TTL)]
            )
        except GlideBaseError as exc:
            raise StoreError(f"could not claim notification {notification.claim}: {exc}") from exc
        if reply is None:
            return False
        self.claimed.append(notification.claim)
        del self.claimed[:-1000]
        return True

    async def _deliver(self, client: httpx.AsyncClient, url: str, notification: Notification) -> None:
        counters = self.dashboard.counters
        delay = 0.5
        problem = ""
        async with self._limiter:
            for attempt in range(1, self.max_attempts + 1):
                try:
                    response = await client.post(url, json=notification.payload)
                except httpx.HTTPError as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                else:
                    if response.is_success:
                        counters.notified(notification.event, "sent")
                        return
                    problem = f"HTTP {response.status_code}"
                if attempt < self.max_attempts:
                    await anyio.sleep(delay)
                    delay *= 2
        counters.notified(notification.event, "failed")
        log.warning(
            "could not send %s notification to %s after %d attempts (last: %s)",
            notification.event, _host(url), self.max_attempts, problem,
        )

    # -- what happened --------------------------------------------------------------

    async def poll(self) -> list[Notification]:
        """The events visible in the store now (claimed or not)."""
        telemetry = self.dashboard.reader()
        now = time.time()
        found: list[Notification] = []
        recent = await telemetry.runs(state="failed", limit=RECENT_RUNS)
        for run in recent:
            ended = run.ended or run.started or 0.0
            if ended < self.started - STARTUP_GRACE:
                continue
            if run.retrying:
                continue  # a failed attempt that is started again: only the last one alerts
            error = run.error
            processor = error.processor if error else None
            worker = error.worker if error else None
            why = f" in processor {processor}" + (f": {error.type}: {error.message}" if error else "")
            found.append(self._event(
                "run.failed", run.id, f"/runs/{run.id}",
                f"run {run.id[:12]} of flow {_flow(run.flow)} failed{why if processor else ''}",
                run_id=run.id, flow=run.flow, processor=processor, worker=worker,
            ))
        running = await telemetry.runs(state="running", limit=RUNNING_RUNS)
        snapshots = [s for s in await telemetry.run_snapshots([r.id for r in running]) if s is not None]
        found += self._running_events(snapshots, now)
        for gone in await telemetry.workers():
            if gone.online or gone.stopped is not None:
                continue
            found.append(self._event(
                "worker.offline", f"{gone.id}:{gone.last_beat!r}", "/operations",
                f"worker {gone.id} on {gone.host} stopped heart-beating "
                f"{gone.seconds_since_beat:.0f}s ago without stopping on purpose",
                worker=gone.id,
            ))
        return found

    def _running_events(self, snapshots: list[RunSnapshot], now: float) -> list[Notification]:
        found: list[Notification] = []
        red_now: set[tuple[str, str, str]] = set()
        stuck_after = self.dashboard.config.stuck_after
        for run in snapshots:
            if run.state != "running":
                continue
            quiet = now - (run.last_activity or run.started or now)
            if quiet >= stuck_after:
                found.append(self._event(
                    "run.stuck", run.id, f"/runs/{run.id}",
                    f"run {run.id[:12]} of flow {_flow(run.flow)} has written nothing for {quiet:.0f}s",
                    run_id=run.id, flow=run.flow,
                ))
            for edge in run.edges:
                if edge.fill is None or edge.fill <= EDGE_FILL_RED_ABOVE:
                    continue
                key = (run.id, edge.io, edge.target)
                red_now.add(key)
                since = self._red_since.setdefault(key, now)
                if now - since >= self.after:
                    found.append(self._event(
                        "edge.backpressured", f"{run.id}:{edge.io}:{edge.target}", f"/runs/{run.id}",
                        f"edge {edge.io} ({edge.source} -> {edge.target}) of run {run.id[:12]} of flow "
                        f"{_flow(run.flow)} has been {edge.fill:.0%} full for {now - since:.0f}s: "
                        f"{edge.target} is not keeping up",
                        run_id=run.id, flow=run.flow, processor=edge.target, io=edge.io,
                        source=edge.source, target=edge.target,
                    ))
        for key in set(self._red_since) - red_now:  # it drained: the clock starts again
            del self._red_since[key]
        return found

    def _event(self, event: str, claim: str, path: str, text: str, **fields: Any) -> Notification:
        url = self.public_url + quote(path, safe="/?=&")
        payload: dict[str, Any] = {
            "event": event,
            **{k: v for k, v in fields.items() if v is not None},
            "url": url,
            "text": f"Datagraph: {text} <{url}>",
            "at": time.time(),
            "dashboard": self.public_url,
        }
        return Notification(event=event, claim=f"{event}:{claim}", payload=payload)


def _flow(name: str | None) -> str:
    return repr(name) if name else "(unnamed)"


def _host(url: str) -> str:
    """A webhook URL's host only: its path often holds a secret (Slack's does)."""
    return urlsplit(url).netloc
