"""Running a finished run again, from its page or the API.

- ``GET /runs/{id}/rerun-panel``: the run page's re-run panel (a partial,
  loaded by the page and polled while the run is running): where the run
  comes from, its re-runs, and "Run again" / "Edit and run again" once it has
  ended, or why it cannot be run again.
- ``POST /runs/{id}/rerun`` (form) and ``POST /api/runs/{id}/rerun`` (JSON,
  201 ``{"run_id", "url", "rerun_of"}``): same flow, same inputs.
- ``GET /runs/{id}/rerun/edit``: the launch form, pre-filled with the run's
  inputs, to change some before launching; it posts back to the same address,
  which runs the run's own flow with the edited inputs, linked to the run
  like any re-run.
- ``GET /api/runs/{id}/rerun``: the re-run facts as JSON.
"""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic_core import to_jsonable_python

from datagraph.exceptions import DatagraphError, RerunError, RunError
from datagraph.rerun import kept_inputs, rerun, rerun_info
from datagraph.supervisor import Supervisor

from ..dashboard import Dashboard, get_dashboard
from ..forms import InputField, Submission, parse_form
from ..launching import LaunchTarget, launch_target
from .common import is_htmx, page

__all__ = ["router"]

router = APIRouter()

DashboardDep = Annotated[Dashboard, Depends(get_dashboard)]


def _supervisor(dashboard: Dashboard) -> Supervisor:
    supervisor = dashboard.supervisor
    if supervisor is None:
        raise HTTPException(409, "this dashboard is read-only: no supervisor is attached to start runs")
    return supervisor


async def _rerun(dashboard: Dashboard, run_id: str) -> str:
    supervisor = _supervisor(dashboard)
    try:
        return await rerun(supervisor, run_id)
    except RerunError as exc:
        raise HTTPException(409, str(exc)) from exc
    except RunError as exc:
        raise HTTPException(404, str(exc)) from exc
    except DatagraphError as exc:  # the flow no longer resolves, or no worker implements it now
        raise HTTPException(422, f"run {run_id} could not be started again: {exc}") from exc


@router.get("/runs/{run_id}/rerun-panel")
async def rerun_panel(request: Request, dashboard: DashboardDep, run_id: str) -> Response:
    supervisor = dashboard.supervisor
    info = await rerun_info(supervisor, run_id) if supervisor is not None else None
    return page(request, dashboard, "partials/run_rerun.html", {"run_id": run_id, "rerun": info})


@router.post("/runs/{run_id}/rerun")
async def rerun_form(request: Request, dashboard: DashboardDep, run_id: str) -> Response:
    new_id = await _rerun(dashboard, run_id)
    target = f"/runs/{new_id}"
    if is_htmx(request):
        return Response(status_code=200, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


@router.post("/api/runs/{run_id}/rerun", status_code=201)
async def api_rerun(dashboard: DashboardDep, run_id: str) -> Response:
    new_id = await _rerun(dashboard, run_id)
    return JSONResponse({"run_id": new_id, "url": f"/runs/{new_id}", "rerun_of": run_id}, status_code=201)


@router.get("/api/runs/{run_id}/rerun")
async def api_rerun_info(dashboard: DashboardDep, run_id: str) -> dict[str, Any]:
    info = await rerun_info(_supervisor(dashboard), run_id)
    if info is None:
        raise HTTPException(404, f"run {run_id} is unknown, or has expired")
    return info.to_dict()


def prefill(fields: list[InputField], given: dict[str, list[Any]]) -> Submission:
    """A launch form showing ``given`` (what a run was started with) in its fields."""
    submission = Submission()
    for f in fields:
        values = given.get(f.io)
        if not values:
            continue
        if len(values) > 1:
            submission.raw[f.many_name] = json.dumps(to_jsonable_python(values))
            continue
        value = values[0]
        if value is None:
            text = ""
        elif f.widget == "bool":
            text = "true" if value else ""
        elif f.widget in ("int", "float", "text", "select"):
            text = str(value)
        else:
            text = json.dumps(to_jsonable_python(value))
        submission.raw[f.name] = text
    return submission


async def _edit_target(dashboard: Dashboard, run_id: str) -> tuple[LaunchTarget, dict[str, list[Any]]]:
    supervisor = _supervisor(dashboard)
    try:
        plan, given = await kept_inputs(supervisor, run_id)
    except RerunError as exc:
        raise HTTPException(409, str(exc)) from exc
    except RunError as exc:
        raise HTTPException(404, str(exc)) from exc
    names = [p["name"] for p in plan.processors]
    target = await launch_target(dashboard, flow=None, processors=names, name=plan.flow.get("name") or "")
    if target is None:  # only a saved flow's name can be missing, and none was given
        raise HTTPException(404, f"the flow of run {run_id} cannot be found")
    return target, given


def _edit_context(run_id: str, target: LaunchTarget, submission: Submission) -> dict[str, Any]:
    return {
        "target": target, "submission": submission, "active_page": "runs",
        "launch_action": f"/runs/{quote(run_id, safe='')}/rerun/edit",
    }


@router.get("/runs/{run_id}/rerun/edit")
async def edit_rerun(request: Request, dashboard: DashboardDep, run_id: str) -> Response:
    target, given = await _edit_target(dashboard, run_id)
    context = _edit_context(run_id, target, prefill(target.fields, given))
    return page(request, dashboard, "pages/launch.html", context)


@router.post("/runs/{run_id}/rerun/edit")
async def edit_rerun_submit(request: Request, dashboard: DashboardDep, run_id: str) -> Response:
    """The edited inputs: run the flow of ``run_id`` again with them (linked to it, like a re-run)."""
    target, _ = await _edit_target(dashboard, run_id)
    form = await request.form()
    submission = parse_form(target.fields, {k: str(v) for k, v in form.items()})
    if submission.ok:
        try:
            new_id = await rerun(_supervisor(dashboard), run_id, inputs=submission.values)
        except DatagraphError as exc:
            submission.errors[""] = str(exc)
        else:
            where = f"/runs/{new_id}"
            if is_htmx(request):
                return Response(status_code=200, headers={"HX-Redirect": where})
            return RedirectResponse(where, status_code=303)
    context = _edit_context(run_id, target, submission)
    if is_htmx(request):
        return page(request, dashboard, "partials/launch_form.html", context)
    return page(request, dashboard, "pages/launch.html", context, status_code=422)
