"""JSON API, Prometheus metrics and the health check.

- ``GET /api/processors``, ``/api/processors/{name}``, ``/api/workers``,
  ``/api/runs?state=&limit=&before=``, ``/api/runs/{id}``, ``/api/flows``,
  ``/api/flows/{name}``: telemetry snapshots as JSON (``to_dict()``).
- ``POST /api/runs`` with ``{"flow": "<saved name>"}`` or ``{"processors":
  [...], "name": ...}``, plus ``"inputs": {io: value}`` and/or ``"streams":
  {io: [values...]}``: launches with the launch form's validation; 201
  ``{"run_id", "url"}``, or 422 ``{"detail", "errors": {io: message}}``.
- ``POST /api/runs/{id}/cancel``: ``{"cancelled": bool}``.
- ``GET /metrics``: Prometheus text exposition format (see :mod:`web.metrics`).
- ``GET /healthz``: 200 when the store answers, else 503 (no token needed).
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import JSONResponse, Response
from glide import GlideError as GlideBaseError
from pydantic import BaseModel, ConfigDict, Field

from datagraph import flows_store
from datagraph.exceptions import RunError
from datagraph.snapshots import RUN_STATES

from .. import metrics
from ..dashboard import Dashboard, get_dashboard
from ..forms import parse_json_inputs
from ..histories import REDRAW_SECONDS
from ..launching import MAX_RETRIES, LaunchError, launch, launch_target

__all__ = ["router"]

router = APIRouter()

DashboardDep = Annotated[Dashboard, Depends(get_dashboard)]

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
async def api_run_history(dashboard: DashboardDep, run_id: str, since: float | None = None) -> Response:
    """Per-edge and per-processor series (1 s apart, 1 min before the last 15 min) and the bottleneck.

    The whole history is the one the run's page shows (:mod:`web.histories`), read again
    when 2 s old, its JSON made once per reading; ``since`` reads that part from the store.
    """
    unknown = HTTPException(404, f"run {run_id} is unknown, or has expired")
    if since is None:
        drawn = await dashboard.histories.get(dashboard.telemetry, run_id, max_age=REDRAW_SECONDS)
        if drawn is None:
            raise unknown
        body = drawn.json()
    else:
        history = await dashboard.telemetry.history(run_id, since=since)
        if history is None:
            raise unknown
        body = json.dumps(history.to_dict(), separators=(",", ":")).encode()
    return Response(body, media_type="application/json")


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
    #: Times the run is started again after a lost worker and the like (None: the setting).
    retries: int | None = Field(default=None, ge=0, le=MAX_RETRIES)


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
        run_id = await launch(dashboard, target, submission, retries=body.retries)
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


@router.get("/metrics")
async def metrics_route(dashboard: DashboardDep) -> Response:
    return Response(await metrics.exposition(dashboard), media_type=metrics.CONTENT_TYPE)
