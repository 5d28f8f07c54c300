"""JSON API, Prometheus metrics and the health check.

- ``GET /api/processors``, ``/api/processors/{name}``, ``/api/workers``,
  ``/api/runs?state=&limit=&before=``, ``/api/runs/{id}``, ``/api/flows``,
  ``/api/flows/{name}``: telemetry snapshots as JSON (``to_dict()``).
- ``POST /api/runs`` with ``{"flow": "<saved name>"}`` or ``{"processors":
  [...], "name": ...}``, plus ``"inputs": {io: value}`` and/or ``"streams":
  {io: [values...]}``: launches with the launch form's validation; 201
  ``{"run_id", "url"}``, or 422 ``{"detail", "errors": {io: message}}``.
- ``POST /api/runs/{id}/cancel``: ``{"cancelled": bool}``.
- ``GET /metrics``: Prometheus text exposition format.
- ``GET /healthz``: 200 when the store answers, else 503 (no token needed).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from glide import GlideError as GlideBaseError
from pydantic import BaseModel, ConfigDict

from datagraph import flows_store
from datagraph.exceptions import RunError
from datagraph.snapshots import RUN_STATES, EdgeSnapshot

from ..dashboard import Dashboard, get_dashboard
from ..forms import parse_json_inputs
from ..launching import LaunchError, launch, launch_target

__all__ = ["router"]

router = APIRouter()

DashboardDep = Annotated[Dashboard, Depends(get_dashboard)]

#: Most recent runs counted by ``datagraph_runs``; running runs whose edges are exported.
METRICS_RECENT_RUNS = 1000
METRICS_RUNNING_RUNS = 100


@router.get("/api/processors")
async def api_processors(dashboard: DashboardDep) -> list[dict[str, Any]]:
    return [p.to_dict() for p in await dashboard.telemetry.processors()]


@router.get("/api/processors/{name}")
async def api_processor(dashboard: DashboardDep, name: str) -> dict[str, Any]:
    info = await dashboard.telemetry.processor(name)
    if info is None:
        raise HTTPException(404, f"no processor named {name!r} is registered")
    return info.to_dict()


@router.get("/api/workers")
async def api_workers(dashboard: DashboardDep) -> list[dict[str, Any]]:
    return [w.to_dict() for w in await dashboard.telemetry.workers()]


@router.get("/api/runs")
async def api_runs(
    dashboard: DashboardDep,
    state: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: float | None = None,
) -> list[dict[str, Any]]:
    if state is not None and state not in RUN_STATES:
        raise HTTPException(422, f"unknown run state {state!r}; the states are {', '.join(RUN_STATES)}")
    return [r.to_dict() for r in await dashboard.telemetry.runs(state=state, limit=limit, before=before)]


@router.get("/api/runs/{run_id}")
async def api_run(dashboard: DashboardDep, run_id: str) -> dict[str, Any]:
    run = await dashboard.telemetry.run(run_id)
    if run is None:
        raise HTTPException(404, f"run {run_id} is unknown, or has expired")
    return run.to_dict()


@router.get("/api/runs/{run_id}/history")
async def api_run_history(dashboard: DashboardDep, run_id: str, since: float | None = None) -> dict[str, Any]:
    """Per-edge and per-processor series (1 s apart, 1 min before the last 15 min) and the bottleneck."""
    history = await dashboard.telemetry.history(run_id, since=since)
    if history is None:
        raise HTTPException(404, f"run {run_id} is unknown, or has expired")
    return history.to_dict()


@router.get("/api/flows")
async def api_flows(dashboard: DashboardDep) -> list[dict[str, Any]]:
    return [f.to_dict() for f in await flows_store.list_flows(dashboard.client)]


@router.get("/api/flows/{name}")
async def api_flow(dashboard: DashboardDep, name: str) -> dict[str, Any]:
    record = await flows_store.load_flow(dashboard.client, name)
    if record is None:
        raise HTTPException(404, f"there is no saved flow named {name!r}")
    return record.to_dict()


class LaunchRequest(BaseModel):
    """Body of ``POST /api/runs``."""

    model_config = ConfigDict(extra="forbid")

    #: A saved flow's name; or else ``processors`` (registered names).
    flow: str | None = None
    processors: list[str] | None = None
    #: The run's flow name when launching ``processors``.
    name: str | None = None
    #: One value per input.
    inputs: dict[str, Any] = {}
    #: Several values per input (each a JSON list).
    streams: dict[str, Any] = {}


@router.post("/api/runs", status_code=201)
async def api_launch(dashboard: DashboardDep, body: LaunchRequest) -> Response:
    if not body.flow and not body.processors:
        raise HTTPException(422, "give either 'flow' (a saved flow's name) or 'processors' (a list of names)")
    target = await launch_target(
        dashboard, flow=body.flow, processors=body.processors or [], name=body.name or ""
    )
    if target is None:
        raise HTTPException(404, f"there is no saved flow named {body.flow!r}")
    if target.design.errors:
        return JSONResponse({
            "detail": "the flow cannot run",
            "errors": {"": "; ".join(m.text for m in target.design.errors)},
        }, status_code=422)
    submission = parse_json_inputs(target.fields, body.inputs, body.streams)
    if not submission.ok:
        return JSONResponse({"detail": "invalid inputs", "errors": submission.errors}, status_code=422)
    try:
        run_id = await launch(dashboard, target, submission)
    except LaunchError as exc:
        return JSONResponse({"detail": str(exc), "errors": {"": str(exc)}}, status_code=422)
    return JSONResponse({"run_id": run_id, "url": f"/runs/{run_id}"}, status_code=201)


@router.post("/api/runs/{run_id}/cancel")
async def api_cancel(dashboard: DashboardDep, run_id: str) -> dict[str, Any]:
    supervisor = dashboard.supervisor
    if supervisor is None:
        raise HTTPException(409, "this dashboard is read-only: no supervisor is attached to cancel runs")
    try:
        cancelled = await supervisor.cancel(run_id)
    except RunError as exc:
        raise HTTPException(404, str(exc)) from exc
    except GlideBaseError as exc:
        raise HTTPException(503, f"could not cancel run {run_id}: {exc}") from exc
    return {"run_id": run_id, "cancelled": cancelled}


@router.get("/healthz")
async def healthz(dashboard: DashboardDep) -> Response:
    try:
        await dashboard.client.custom_command(["PING"])
    except GlideBaseError as exc:
        return JSONResponse({"status": "degraded", "store": str(exc)}, status_code=503)
    return JSONResponse({
        "status": "ok", "store": "ok", "live_pollers": dashboard.hub.active_pollers,
        "uptime": round(time.time() - dashboard.started, 1),
    })


# -- metrics ----------------------------------------------------------------------------


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help: str, samples: list[tuple[dict[str, Any], float]]) -> None:
        self.lines.append(f"# HELP {name} {help}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            inner = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{inner}}} {_number(value)}" if inner else f"{name} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


#: Per-edge gauges of running runs: name, help, value (None: no sample).
_EDGE_FAMILIES: list[tuple[str, str, Callable[[EdgeSnapshot], float | None]]] = [
    ("datagraph_edge_backlog", "Values written to an edge and not yet read (running runs).",
     lambda e: e.backlog),
    ("datagraph_edge_throughput", "Values per second written to an edge (running runs).",
     lambda e: e.throughput),
    ("datagraph_edge_written", "Values written to an edge so far (running runs).",
     lambda e: e.written),
    ("datagraph_edge_backpressure_limit", "Backlog at which an edge's writer waits (running runs).",
     lambda e: e.backpressure_limit),
    ("datagraph_edge_fill_ratio", "Backlog / backpressure limit (running runs).",
     lambda e: e.fill),
]


@router.get("/metrics")
async def metrics(dashboard: DashboardDep) -> Response:
    telemetry = dashboard.metrics_reader()
    workers = await telemetry.workers()
    processors = await telemetry.processors()
    recent = await telemetry.runs(limit=METRICS_RECENT_RUNS)
    running = await telemetry.runs(state="running", limit=METRICS_RUNNING_RUNS)
    snapshots = [s for s in await telemetry.run_snapshots([r.id for r in running]) if s is not None]

    out = _Exposition()
    counts = dict.fromkeys(RUN_STATES, 0)
    for run in recent:
        counts[run.state] = counts.get(run.state, 0) + 1
    out.family("datagraph_runs", "gauge",
               f"Runs by state, among the {METRICS_RECENT_RUNS} most recent.",
               [({"state": state}, n) for state, n in counts.items()])
    online = sum(1 for w in workers if w.online)
    out.family("datagraph_workers_online", "gauge", "Workers whose heartbeat is within their lease.",
               [({}, online)])
    out.family("datagraph_workers", "gauge", "Workers heard from within the retention period, by status.",
               [({"status": "online"}, online), ({"status": "offline"}, len(workers) - online)])
    out.family("datagraph_processors_registered", "gauge", "Registered processors.",
               [({}, len(processors))])
    out.family("datagraph_processors_online", "gauge", "Registered processors with an online worker.",
               [({}, sum(1 for p in processors if p.online))])

    edges = [(run, edge) for run in snapshots for edge in run.edges]
    for name, help, value in _EDGE_FAMILIES:
        samples = [
            ({"run": r.id, "flow": r.flow, "io": e.io, "source": e.source, "target": e.target}, value(e))
            for r, e in edges
        ]
        out.family(name, "gauge", help, [(labels, v) for labels, v in samples if v is not None])
    out.family("datagraph_dashboard_live_pollers", "gauge", "Live views being polled (one per run or page).",
               [({}, dashboard.hub.active_pollers)])
    return PlainTextResponse(out.text(), media_type="text/plain; version=0.0.4; charset=utf-8")
