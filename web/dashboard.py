"""What every route needs: the store, the supervisor, the hub and the templates."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.templating import Jinja2Templates

from datagraph.exceptions import ConfigError
from datagraph.telemetry import Telemetry

from . import overlay
from .histories import RunHistories
from .hub import Hub
from .metrics import DashboardCounters

if TYPE_CHECKING:
    from datagraph.store.client import Store
    from datagraph.supervisor import Supervisor

__all__ = ["ASSETS", "Dashboard", "DashboardConfig", "get_dashboard"]


def _asset_dir(name: str) -> Path:
    """``templates/`` or ``static/``: beside the package in a checkout, inside it when installed."""
    here = Path(__file__).resolve().parent
    for candidate in (here / name, here.parent / name):
        if candidate.is_dir():
            return candidate
    raise RuntimeError(f"cannot find the dashboard's {name}/ directory near {here}")


@dataclass(frozen=True)
class _Assets:
    templates: Path
    static: Path


ASSETS = _Assets(templates=_asset_dir("templates"), static=_asset_dir("static"))


@dataclass(frozen=True)
class DashboardConfig:
    """Settings of one dashboard app (see ``create_app``)."""

    token: str | None = None
    #: Read-only access (pages, API reads, events, metrics); needs ``token``.
    viewer_token: str | None = None
    #: Seconds between polls of a live run (and of a finished one).
    poll_interval: float = 1.0
    finished_poll_interval: float = 5.0
    #: Seconds between polls of the operations page.
    ops_interval: float = 2.0
    #: A running run with no write for this long is listed as stuck.
    stuck_after: float = 300.0
    #: Failed runs younger than this are listed on the operations page.
    failed_window: float = 3600.0


class Dashboard:
    """The app's shared state: ``request.app.state.dashboard``."""

    def __init__(
        self,
        config: DashboardConfig,
        *,
        supervisor: Supervisor | None,
        redis_url: str | None,
        templates: Jinja2Templates,
    ) -> None:
        self.config = config
        self.redis_url = redis_url
        self._supervisor = supervisor
        self.templates = templates
        self.hub = Hub()
        #: What this process counts itself, for ``/metrics``.
        self.counters = DashboardCounters()
        #: Each run's history as last read and drawn: its page, live feed and API share it.
        self.histories = RunHistories()
        self._telemetry: Telemetry | None = None
        self._metrics: Telemetry | None = None
        self.started = time.time()

    # -- lifecycle (called by the app's lifespan) ---------------------------------

    async def open(self) -> None:
        supervisor = self.supervisor
        if supervisor is not None:
            # The supervisor's runtime on the server's own loop publishes the processors
            # implemented in this process and heart-beats it as a worker, from startup:
            # without it, a dashboard reading through a connection of its own (--app with
            # --redis-url) would launch with a LocalExecutor nobody knows about.
            await supervisor.runtime()
        if self.redis_url is not None:
            settings = supervisor.settings if supervisor is not None else None
            self._telemetry = await Telemetry.connect(self.redis_url, settings)
        elif supervisor is not None:
            self._telemetry = await Telemetry.from_supervisor(supervisor)
        else:
            raise ConfigError(
                "the dashboard has no store to read: pass redis_url=... to create_app(), or attach a "
                "Supervisor (Supervisor.attach(redis_config=..., executor=...)) before it starts"
            )

    async def aclose(self) -> None:
        if self._telemetry is not None:
            await self._telemetry.aclose()
            self._telemetry = None

    # -- what routes use ---------------------------------------------------------

    @property
    def supervisor(self) -> Supervisor | None:
        """The supervisor runs are launched and cancelled through (None: read-only)."""
        if self._supervisor is not None:
            return self._supervisor
        from datagraph.supervisor import Supervisor

        return Supervisor._current

    @property
    def telemetry(self) -> Telemetry:
        if self._telemetry is None:
            raise RuntimeError("the dashboard is not started (its lifespan has not run)")
        return self._telemetry

    @property
    def client(self) -> Store:
        return self.telemetry.client

    def reader(self) -> Telemetry:
        """A Telemetry of its own on the shared connection (for a poller: its own rate samples)."""
        return Telemetry(self.telemetry.client, self.telemetry.settings)

    def metrics_reader(self) -> Telemetry:
        """The Telemetry ``/metrics`` reads with (kept, so rates span scrapes)."""
        if self._metrics is None or self._metrics.client is not self.telemetry.client:
            self._metrics = self.reader()
        return self._metrics

    def render(self, template: str, **context: Any) -> str:
        """A template rendered to text outside a request (live fragments)."""
        context.setdefault("now", time.time())
        return self.templates.get_template(template).render(**context)


def ago(at: float | None, now: float | None = None) -> str:
    """"12s ago" for a unix time."""
    if at is None:
        return overlay.NO_VALUE
    return overlay.format_duration((now if now is not None else time.time()) - at) + " ago"


def get_dashboard(request: Request) -> Dashboard:
    dashboard: Dashboard = request.app.state.dashboard
    return dashboard
