"""``GET /metrics``: the deployment as Prometheus series, with bounded cardinality.

Every scrape reads the store once (through the engine's telemetry) and turns
what it read into metric families with ``prometheus_client``; nothing is
kept between scrapes but the dashboard's own counters.

No series carries a run id: a deployment that starts many runs would get a
new set of series per run. Edges of running runs are labelled by ``flow``,
``io``, ``source`` and ``target`` and aggregated over the runs of that flow
(backlogs and throughputs summed, fill and limit as their maximum); per-run
detail stays in the JSON API (``/api/runs/{id}``). So a deployment exports

- 8 series of its own (store, workers by status, processor counts, live
  pollers, failed logins) plus one per run state (4),
- 1 per registered processor (``datagraph_processor_online``),
- 2 per flow with failed or stuck runs (``datagraph_failed_runs``,
  ``datagraph_stuck_runs``, only while there are some),
- 4 per edge of a flow with a running run,
- the notification counters (one per event kind and outcome that happened),
- and ``prometheus_client``'s process series (``process_*``, about 6).

When the store does not answer, the scrape still succeeds with
``datagraph_store_up 0`` and the dashboard's own series, so the alert on it
can fire.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from glide import GlideError as GlideBaseError
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from datagraph.exceptions import StoreError
from datagraph.snapshots import RUN_STATES, RunSnapshot

if TYPE_CHECKING:
    from .dashboard import Dashboard

__all__ = ["CONTENT_TYPE", "METRICS_RECENT_RUNS", "METRICS_RUNNING_RUNS", "DashboardCounters", "exposition"]

log = logging.getLogger("web.metrics")

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
#: Most recent runs counted by ``datagraph_runs`` and ``datagraph_failed_runs``.
METRICS_RECENT_RUNS = 1000
#: Running runs whose edges and quiet time are looked at.
METRICS_RUNNING_RUNS = 100
#: The label value of a run launched without a flow name.
UNNAMED_FLOW = "(unnamed)"


@dataclass
class DashboardCounters:
    """What this dashboard process counts itself (reset when it restarts, as counters may)."""

    failed_logins: int = 0
    #: (event, outcome) -> notifications, outcome ``sent`` or ``failed``.
    notifications: dict[tuple[str, str], int] = field(default_factory=dict)

    def notified(self, event: str, outcome: str) -> None:
        self.notifications[event, outcome] = self.notifications.get((event, outcome), 0) + 1


@dataclass
class _EdgeTotals:
    backlog: float = 0.0
    throughput: float = 0.0
    limit: float | None = None
    fill: float | None = None

    def add(self, backlog: float, throughput: float, limit: float | None, fill: float | None) -> None:
        self.backlog += backlog
        self.throughput += throughput
        if limit is not None:
            self.limit = limit if self.limit is None else max(self.limit, limit)
        if fill is not None:
            self.fill = fill if self.fill is None else max(self.fill, fill)


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def _flow(name: str | None) -> str:
    return name or UNNAMED_FLOW


async def _store_families(dashboard: Dashboard, now: float) -> list[Metric]:
    """Everything read from the store; raises StoreError or a Glide error when it does not answer."""
    telemetry = dashboard.metrics_reader()
    config = dashboard.config
    workers = await telemetry.workers()
    processors = await telemetry.processors()
    recent = await telemetry.runs(limit=METRICS_RECENT_RUNS)
    running = await telemetry.runs(state="running", limit=METRICS_RUNNING_RUNS)
    snapshots: list[RunSnapshot] = [
        s for s in await telemetry.run_snapshots([r.id for r in running]) if s is not None
    ]

    runs = GaugeMetricFamily(
        "datagraph_runs", f"Runs by state, among the {METRICS_RECENT_RUNS} most recent.", labels=["state"]
    )
    counts = dict.fromkeys(RUN_STATES, 0)
    failed: dict[str, int] = {}
    for run in recent:
        counts[run.state] = counts.get(run.state, 0) + 1
        recent_end = (run.ended or run.started or 0.0) >= now - config.failed_window
        if run.state == "failed" and not run.retrying and recent_end:
            failed[_flow(run.flow)] = failed.get(_flow(run.flow), 0) + 1
    for state, n in counts.items():
        runs.add_metric([state], n)

    failed_runs = GaugeMetricFamily(
        "datagraph_failed_runs",
        f"Runs that failed within the last {config.failed_window:.0f} seconds, by flow.",
        labels=["flow"],
    )
    for flow, n in sorted(failed.items()):
        failed_runs.add_metric([flow], n)

    stuck: dict[str, int] = {}
    edges: dict[tuple[str, str, str, str], _EdgeTotals] = {}
    for snap in snapshots:
        if snap.state != "running":
            continue
        flow = _flow(snap.flow)
        if now - (snap.last_activity or snap.started or now) >= config.stuck_after:
            stuck[flow] = stuck.get(flow, 0) + 1
        for edge in snap.edges:
            key = (flow, edge.io, edge.source, edge.target)
            edges.setdefault(key, _EdgeTotals()).add(
                edge.backlog, edge.throughput, edge.backpressure_limit, edge.fill
            )
    stuck_runs = GaugeMetricFamily(
        "datagraph_stuck_runs",
        f"Running runs with no write for {config.stuck_after:.0f} seconds or more, by flow.",
        labels=["flow"],
    )
    for flow, n in sorted(stuck.items()):
        stuck_runs.add_metric([flow], n)

    online = sum(1 for w in workers if w.online)
    stopped = sum(1 for w in workers if not w.online and w.stopped is not None)
    worker_family = GaugeMetricFamily(
        "datagraph_workers",
        "Workers heard from within their retention, by status: online, stopped (on purpose), "
        "offline (silent without stopping).",
        labels=["status"],
    )
    worker_family.add_metric(["online"], online)
    worker_family.add_metric(["stopped"], stopped)
    worker_family.add_metric(["offline"], len(workers) - online - stopped)

    registered = GaugeMetricFamily("datagraph_processors_registered", "Registered processors.",
                                   value=len(processors))
    processors_online = GaugeMetricFamily(
        "datagraph_processors_online", "Registered processors with an online worker.",
        value=sum(1 for p in processors if p.online),
    )
    processor_online = GaugeMetricFamily(
        "datagraph_processor_online", "1 when a worker implementing the processor is online, else 0.",
        labels=["processor"],
    )
    for info in processors:
        processor_online.add_metric([info.name], 1 if info.online else 0)

    labels = ["flow", "io", "source", "target"]
    backlog = GaugeMetricFamily(
        "datagraph_edge_backlog_values",
        "Values written to an edge and not yet read, summed over the flow's running runs.", labels=labels,
    )
    throughput = GaugeMetricFamily(
        "datagraph_edge_throughput_values_per_second",
        "Values written to an edge per second, summed over the flow's running runs.", labels=labels,
    )
    limit = GaugeMetricFamily(
        "datagraph_edge_backpressure_limit_values",
        "Backlog at which an edge's writer waits (the largest among the flow's running runs).", labels=labels,
    )
    fill = GaugeMetricFamily(
        "datagraph_edge_fill_ratio",
        "Backlog over backpressure limit: the fullest run of the flow (1 = writer waits).", labels=labels,
    )
    for key, totals in sorted(edges.items()):
        values = list(key)
        backlog.add_metric(values, totals.backlog)
        throughput.add_metric(values, totals.throughput)
        if totals.limit is not None:
            limit.add_metric(values, totals.limit)
        if totals.fill is not None:
            fill.add_metric(values, totals.fill)
    return [
        runs, failed_runs, stuck_runs, worker_family, registered, processors_online, processor_online,
        backlog, throughput, limit, fill,
    ]


def _own_families(dashboard: Dashboard, store_up: bool) -> list[Metric]:
    up = GaugeMetricFamily("datagraph_store_up", "1 when the store answered this scrape, else 0.",
                           value=1 if store_up else 0)
    pollers = GaugeMetricFamily(
        "datagraph_dashboard_live_pollers", "Live views being polled (one per run or page).",
        value=dashboard.hub.active_pollers,
    )
    counters = dashboard.counters
    logins = CounterMetricFamily(
        "datagraph_dashboard_failed_logins", "Requests refused for a wrong token, by this dashboard process.",
        value=counters.failed_logins,
    )
    notifications = CounterMetricFamily(
        "datagraph_notifications", "Webhook notifications by event and outcome (sent, failed).",
        labels=["event", "outcome"],
    )
    for (event, outcome), n in sorted(counters.notifications.items()):
        notifications.add_metric([event, outcome], n)
    return [up, pollers, logins, notifications]


async def exposition(dashboard: Dashboard) -> bytes:
    """The text exposition of one scrape."""
    now = time.time()
    try:
        families = await _store_families(dashboard, now)
        store_up = True
    except (StoreError, GlideBaseError) as exc:
        log.warning("metrics: the store did not answer: %s", exc)
        families, store_up = [], False
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*_own_families(dashboard, store_up), *families]))
    ProcessCollector(registry=registry)
    return generate_latest(registry)
