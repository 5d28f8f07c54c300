"""View models of the live pages, and their fragments.

The run view and the operations page are rendered twice from the same
partials: whole, when the page is requested, and fragment by fragment, by
the one poller that feeds every viewer over SSE (``web.routes.events``).
The SSE event names are the keys of the fragment dictionaries:
:data:`RUN_EVENTS` and :data:`OPS_EVENTS`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from datagraph.exceptions import DatagraphError
from datagraph.history import Bottleneck, RunHistory
from datagraph.preview import StreamPreview, latest_values
from datagraph.snapshots import (
    INPUT,
    OUTPUT,
    EdgeSnapshot,
    ProcessorState,
    RunSnapshot,
    RunSummary,
    WorkerSnapshot,
)
from datagraph.store.scripts import TERMINAL
from datagraph.telemetry import Telemetry

from . import overlay
from .dashboard import Dashboard
from .diagram import Diagram, DiagramEdge, diagram, edge_id
from .graph import GraphRenderError, render_svg_async
from .heatmap import Heatmap, sparkline
from .histories import DrawnHistory
from .hub import Feed

__all__ = [
    "OPS_EVENTS",
    "RUN_EVENTS",
    "OpsView",
    "RunLive",
    "RunView",
    "ops_feed",
    "ops_fragments",
    "ops_view",
    "run_feed",
]

#: SSE event names of a run view, each the inner HTML of the element with that ``sse-swap``.
RUN_EVENTS = (
    "run-header", "run-bottleneck", "run-graph", "run-history", "run-edges", "run-processors",
    "run-previews", "run-error", "live-status",
)
#: SSE event names of the operations page.
OPS_EVENTS = (
    "ops-summary", "ops-workers", "ops-running", "ops-runs", "ops-failed", "ops-stuck", "ops-hot-edges",
    "live-status",
)

_RUN_PARTIALS = {
    "run-header": "partials/run_header.html",
    "run-graph": "partials/run_graph.html",
    "run-history": "partials/run_history.html",
    "run-bottleneck": "partials/run_bottleneck.html",
    "run-edges": "partials/run_edges.html",
    "run-processors": "partials/run_processors.html",
    "run-previews": "partials/run_previews.html",
    "run-error": "partials/run_error.html",
    "live-status": "partials/live_status.html",
}
_OPS_PARTIALS = {
    "ops-summary": "partials/ops_summary.html",
    "ops-workers": "partials/ops_workers.html",
    "ops-running": "partials/ops_running.html",
    "ops-runs": "partials/ops_runs.html",
    "ops-failed": "partials/ops_failed.html",
    "ops-stuck": "partials/ops_stuck.html",
    "ops-hot-edges": "partials/ops_hot_edges.html",
    "live-status": "partials/live_status.html",
}


# -- run view -------------------------------------------------------------------------


@dataclass(frozen=True)
class EdgeRow:
    edge: EdgeSnapshot
    dom_id: str
    heat: str
    #: Values per second the target consumes (None until two snapshots were seen).
    read_rate: float | None
    drain: str
    #: The edge's figures in the graph: throughput, then queue (two lines).
    label: str
    #: Recent throughput and backlog as sparklines (empty without history).
    throughput_trend: str = ""
    backlog_trend: str = ""

    @property
    def source_label(self) -> str:
        return "run input" if self.edge.source == INPUT else self.edge.source

    @property
    def target_label(self) -> str:
        return "caller" if self.edge.target == OUTPUT else self.edge.target


@dataclass(frozen=True)
class NodeRow:
    state: ProcessorState
    classes: str
    status: str


@dataclass
class RunView:
    run: RunSnapshot
    edges: list[EdgeRow]
    nodes: list[NodeRow]
    svg: str
    previews: dict[str, StreamPreview]
    #: Why the graph could not be drawn, if it could not.
    graph_error: str | None = None
    #: Why previews are missing, if they are.
    preview_note: str | None = None
    observed: float = field(default_factory=time.time)
    history: RunHistory | None = None
    heatmap: Heatmap | None = None
    #: Why the history is missing, if it is.
    history_note: str | None = None

    @property
    def finished(self) -> bool:
        return self.run.state in TERMINAL

    @property
    def ios(self) -> list[str]:
        return list(dict.fromkeys(edge.io for edge in self.run.edges))


def _run_diagram(run: RunSnapshot) -> Diagram:
    processors = [
        (str(p.get("name")), bool(p.get("wait")))
        for p in run.spec.get("processors", [])
        if isinstance(p, dict)
    ]
    edges = [DiagramEdge(e.io, e.source, e.target) for e in run.edges]
    return diagram(processors, edges, live=True)


class RunLive:
    """What one run's view keeps between polls: its diagram, read rates and history."""

    def __init__(self, dashboard: Dashboard, run_id: str, telemetry: Telemetry | None = None) -> None:
        self.dashboard = dashboard
        self.run_id = run_id
        self.telemetry = telemetry if telemetry is not None else dashboard.reader()
        self._diagram: Diagram | None = None
        self._rates = overlay.ReadRates()
        self.finished = False

    async def snapshot(self) -> RunSnapshot | None:
        return await self.telemetry.run(self.run_id)

    async def view(self, run: RunSnapshot) -> RunView:
        rates = self._rates.observe(run.edges, run.observed_at)
        waits = {str(p.get("name")) for p in run.spec.get("processors", []) if p.get("wait")}
        rows = []
        for edge in run.edges:
            read_rate = rates.get((edge.io, edge.target))
            _, drain = overlay.time_to_drain(edge.backlog, read_rate, edge.throughput)
            if edge.target in waits and edge.read == 0 and edge.backlog > 0:
                drain = overlay.READ_AT_END  # not stalled: it starts once the stream is complete
            label = overlay.edge_label(edge)
            rows.append(EdgeRow(
                edge, edge_id(edge.io, edge.target), overlay.edge_heat(edge), read_rate, drain, label,
            ))
        nodes = [NodeRow(s, overlay.node_classes(s), overlay.node_status(s)) for s in run.processor_states]
        if self._diagram is None:
            self._diagram = _run_diagram(run)
        graph_error = None
        try:
            layout = await render_svg_async(self._diagram.dot)
            svg = self._diagram.fill(
                layout,
                {(r.edge.io, r.edge.target): (r.label, r.heat) for r in rows},
                {n.state.name: (n.status, n.classes) for n in nodes},
            )
        except GraphRenderError as exc:
            svg, graph_error = "", str(exc)
        previews: dict[str, StreamPreview] = {}
        preview_note = None
        supervisor = self.dashboard.supervisor
        ios = list(dict.fromkeys(edge.io for edge in run.edges))
        if supervisor is None:
            preview_note = "no supervisor is attached here, so stream values cannot be verified and shown"
        else:
            try:
                previews = await latest_values(self.telemetry.client, supervisor.codec, run.id, ios)
            except DatagraphError as exc:
                preview_note = str(exc)
        self.finished = run.state in TERMINAL
        view = RunView(run, rows, nodes, svg, previews, graph_error, preview_note, run.observed_at)
        try:
            await self._draw_history(view)
        except DatagraphError as exc:
            view.history_note = f"cannot read the run's history: {exc}"
        return view

    async def _draw_history(self, view: RunView) -> None:
        """The history on ``view``, as the dashboard keeps it for every viewer of the run
        (read and drawn again once its newest column has moved on: :mod:`web.histories`)."""
        _add_history(view, await self.dashboard.histories.get(self.telemetry, self.run_id))

    def fragments(self, view: RunView) -> dict[str, str]:
        render = self.dashboard.render
        fragments = {name: render(template, view=view) for name, template in _RUN_PARTIALS.items()}
        return fragments

    async def poll(self) -> dict[str, str]:
        run = await self.snapshot()
        if run is None:
            self.finished = True
            return {"live-status": self.dashboard.render(
                "partials/live_status.html", view=None, problem="this run is unknown or has expired"
            )}
        return self.fragments(await self.view(run))


def _add_history(view: RunView, drawn: DrawnHistory | None) -> None:
    """The heatmap and the edges' sparklines of a run's history."""
    history = drawn.history if drawn is not None else None
    view.history = history
    if drawn is None or history is None or not history.t:
        view.history_note = "no history recorded yet" if history is not None else "no history for this run"
        return
    view.heatmap = drawn.drawing
    for index, row in enumerate(view.edges):
        trends = drawn.trends(row.edge.io, row.edge.target)
        if trends is not None:
            view.edges[index] = dataclasses.replace(
                row, throughput_trend=trends[0], backlog_trend=trends[1]
            )


def run_feed(dashboard: Dashboard, run_id: str) -> Feed:
    live = RunLive(dashboard, run_id)
    config = dashboard.config

    def interval() -> float:
        return config.finished_poll_interval if live.finished else config.poll_interval

    def on_error(exc: BaseException) -> dict[str, str]:
        return {"live-status": dashboard.render(
            "partials/live_status.html", view=None, problem=f"cannot read the run: {exc}"
        )}

    return Feed(poll=live.poll, interval=interval, on_error=on_error)



# -- operations ---------------------------------------------------------------------


@dataclass(frozen=True)
class HotEdge:
    run: RunSummary
    row: EdgeRow


@dataclass(frozen=True)
class RunTrend:
    """A running run on the operations page: its recent throughput and its bottleneck."""

    run: RunSummary
    #: Values per second delivered (or moved on its busiest IO), last sample.
    throughput: float
    sparkline: str
    bottleneck: Bottleneck | None


@dataclass
class OpsView:
    workers: list[WorkerSnapshot]
    runs: list[RunSummary]
    state: str | None
    failed: list[RunSummary]
    stuck: list[tuple[RunSnapshot, float]]
    hot_edges: list[HotEdge]
    trends: list[RunTrend]
    running: int
    stuck_after: float
    failed_window: float
    counts: dict[str, int]
    observed: float = field(default_factory=time.time)

    @property
    def workers_online(self) -> int:
        return sum(1 for w in self.workers if w.online)


#: Newest runs read for the runs table and the failed list.
OPS_RECENT_RUNS = 300
#: Running runs looked at for stuck runs and hot edges.
OPS_RUNNING_RUNS = 100
#: Hottest edges listed.
OPS_HOT_EDGES = 10
#: Running runs whose throughput trend and bottleneck are shown, and over how many seconds.
OPS_TREND_RUNS = 20
OPS_TREND_SECONDS = 60.0
#: Runs listed on the operations page (``/runs`` pages through all).
OPS_LISTED_RUNS = 25


async def ops_view(
    telemetry: Telemetry, *, state: str | None, stuck_after: float, failed_window: float
) -> OpsView:
    now = time.time()
    workers = await telemetry.workers()
    recent = await telemetry.runs(limit=OPS_RECENT_RUNS)
    running = [r for r in recent if r.state == "running"][:OPS_RUNNING_RUNS]
    if len(running) < OPS_RUNNING_RUNS and len(recent) >= OPS_RECENT_RUNS:
        # Running runs may hide behind the recent ones: read further back. When the
        # recent runs hold enough of them, or all the runs there are, they are the same
        # list (newest first), and the run index is read once, not twice.
        running = await telemetry.runs(state="running", limit=OPS_RUNNING_RUNS)
    counts: dict[str, int] = {}
    for summary in recent:
        counts[summary.state] = counts.get(summary.state, 0) + 1
    listed = [r for r in recent if state is None or r.state == state][:OPS_LISTED_RUNS]
    failed = [
        r for r in recent
        if r.state == "failed" and (r.ended or r.started or 0) >= now - failed_window
    ]
    snapshots = [s for s in await telemetry.run_snapshots([r.id for r in running]) if s is not None]
    stuck = []
    hot: list[HotEdge] = []
    for run in snapshots:
        if run.state != "running":
            continue
        quiet = now - (run.last_activity or run.started or now)
        if quiet >= stuck_after:
            stuck.append((run, quiet))
        for edge in run.edges:
            if edge.backlog <= 0 and edge.throughput <= 0:
                continue
            row = EdgeRow(
                edge, edge_id(edge.io, edge.target), overlay.edge_heat(edge), None, overlay.NO_VALUE,
                overlay.edge_label(edge),
            )
            hot.append(HotEdge(run, row))
    hot.sort(key=lambda h: (
        h.row.edge.fill if h.row.edge.fill is not None else -1.0,
        h.row.edge.backlog,
        h.row.edge.throughput,
    ), reverse=True)
    stuck.sort(key=lambda item: -item[1])
    trends = await _trends(telemetry, running[:OPS_TREND_RUNS], now)
    return OpsView(
        workers=workers,
        runs=listed,
        state=state,
        failed=failed,
        stuck=stuck,
        hot_edges=hot[:OPS_HOT_EDGES],
        trends=trends,
        running=len(running),
        stuck_after=stuck_after,
        failed_window=failed_window,
        counts=counts,
        observed=now,
    )


async def _trends(telemetry: Telemetry, running: list[RunSummary], now: float) -> list[RunTrend]:
    """The last :data:`OPS_TREND_SECONDS` of each running run's history, in one round trip."""
    histories = await telemetry.histories([r.id for r in running], since=now - OPS_TREND_SECONDS)
    trends = []
    for summary, history in zip(running, histories, strict=True):
        if history is None:
            continue
        rates = history.throughput()
        label = f"throughput of run {summary.id[:12]}, last {OPS_TREND_SECONDS:.0f} s"
        trends.append(RunTrend(
            run=summary,
            throughput=rates[-1] if rates else 0.0,
            sparkline=sparkline(rates, css="spark-rate", label=label, width=140),
            bottleneck=history.bottleneck,
        ))
    # Runs with a bottleneck now first, then the busiest.
    trends.sort(key=lambda t: (t.bottleneck is None or t.bottleneck.until is not None, -t.throughput))
    return trends


def ops_fragments(dashboard: Dashboard, view: OpsView) -> dict[str, str]:
    return {name: dashboard.render(template, ops=view, view=view) for name, template in _OPS_PARTIALS.items()}


def ops_feed(dashboard: Dashboard, *, state: str | None, stuck_after: float) -> Feed:
    telemetry = dashboard.reader()
    config = dashboard.config

    async def poll() -> dict[str, str]:
        view = await ops_view(
            telemetry, state=state, stuck_after=stuck_after, failed_window=config.failed_window
        )
        return ops_fragments(dashboard, view)

    def on_error(exc: BaseException) -> dict[str, str]:
        return {"live-status": dashboard.render(
            "partials/live_status.html", view=None, problem=f"cannot read the store: {exc}"
        )}

    return Feed(poll=poll, interval=lambda: config.ops_interval, on_error=on_error)


