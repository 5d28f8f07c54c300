"""HTML pages: processors, runs, one run, operations, and launching."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import RedirectResponse, Response
from glide import GlideError as GlideBaseError

from datagraph.exceptions import RunError
from datagraph.snapshots import RUN_STATES, ProcessorInfo

from ..dashboard import Dashboard, get_dashboard
from ..forms import Submission, parse_form
from ..launching import LaunchError, launch, launch_target, parse_retries
from ..views import RunLive, ops_view
from .common import is_htmx, page

__all__ = ["router"]

router = APIRouter()

DashboardDep = Annotated[Dashboard, Depends(get_dashboard)]


@router.get("/")
async def home() -> Response:
    return RedirectResponse("/operations", status_code=307)


# -- processors ------------------------------------------------------------------------


def matches(info: ProcessorInfo, query: str) -> bool:
    """Whether a processor matches what was typed in the filter (every word, anywhere)."""
    haystack = " ".join([
        info.name, info.description, info.doc, info.module, info.function,
        *(f"{p.name} {p.type}" for p in (*info.inputs, *info.outputs)),
        *info.workers,
    ]).lower()
    return all(word in haystack for word in query.lower().split())


@router.get("/processors")
async def processors_page(request: Request, dashboard: DashboardDep, q: str = "") -> Response:
    everything = await dashboard.telemetry.processors()
    shown = [p for p in everything if matches(p, q)] if q.strip() else everything
    context = {"processors": shown, "total": len(everything), "q": q, "active_page": "processors"}
    if is_htmx(request):
        return page(request, dashboard, "partials/processor_table.html", context)
    return page(request, dashboard, "pages/processors.html", context)


@router.get("/processors/{name}")
async def processor_page(request: Request, dashboard: DashboardDep, name: str) -> Response:
    info = await dashboard.telemetry.processor(name)
    if info is None:
        raise HTTPException(404, f"no processor named {name!r} is registered")
    workers = {w.id: w for w in await dashboard.telemetry.workers()}
    return page(request, dashboard, "pages/processor.html", {
        "p": info, "workers": workers, "active_page": "processors",
    })


# -- runs ----------------------------------------------------------------------------------


@router.get("/runs")
async def runs_page(
    request: Request,
    dashboard: DashboardDep,
    state: str = "",
    before: float | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    if state and state not in RUN_STATES:
        raise HTTPException(404, f"unknown run state {state!r}; the states are {', '.join(RUN_STATES)}")
    runs = await dashboard.telemetry.runs(state=state or None, limit=limit, before=before)
    context = {
        "runs": runs, "state": state, "states": RUN_STATES, "limit": limit, "before": before,
        "next_before": runs[-1].started if len(runs) == limit and runs[-1].started else None,
        "active_page": "runs",
    }
    if is_htmx(request):
        return page(request, dashboard, "partials/runs_table.html", context)
    return page(request, dashboard, "pages/runs.html", context)


@router.get("/runs/{run_id}")
async def run_page(request: Request, dashboard: DashboardDep, run_id: str) -> Response:
    live = RunLive(dashboard, run_id)
    run = await live.snapshot()
    if run is None:
        raise HTTPException(404, f"run {run_id} is unknown, or has expired")
    view = await live.view(run)
    return page(request, dashboard, "pages/run.html", {"view": view, "active_page": "runs"})


@router.post("/runs/{run_id}/cancel")
async def cancel_run(request: Request, dashboard: DashboardDep, run_id: str) -> Response:
    supervisor = dashboard.supervisor
    if supervisor is None:
        raise HTTPException(409, "this dashboard is read-only: no supervisor is attached to cancel runs")
    try:
        await supervisor.cancel(run_id)
    except RunError as exc:
        raise HTTPException(404, str(exc)) from exc
    except GlideBaseError as exc:
        raise HTTPException(503, f"could not cancel run {run_id}: {exc}") from exc
    target = f"/runs/{run_id}"
    if is_htmx(request):
        return Response(status_code=200, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


# -- operations ---------------------------------------------------------------------------


def stuck_seconds(dashboard: Dashboard, value: int | None) -> float:
    return float(value) if value is not None else dashboard.config.stuck_after


@router.get("/operations")
async def operations_page(
    request: Request,
    dashboard: DashboardDep,
    state: str = "",
    stuck_after: Annotated[int | None, Query(ge=10, le=7 * 86400)] = None,
) -> Response:
    if state and state not in RUN_STATES:
        raise HTTPException(404, f"unknown run state {state!r}; the states are {', '.join(RUN_STATES)}")
    view = await ops_view(
        dashboard.reader(), state=state or None,
        stuck_after=stuck_seconds(dashboard, stuck_after), failed_window=dashboard.config.failed_window,
    )
    return page(request, dashboard, "pages/operations.html", {
        "ops": view, "view": view, "states": RUN_STATES, "state": state, "stuck_after": stuck_after,
        "active_page": "operations",
    })


# -- launching ------------------------------------------------------------------------------


@router.get("/launch")
async def launch_page(
    request: Request,
    dashboard: DashboardDep,
    flow: str = "",
    processor: Annotated[list[str] | None, Query()] = None,
    name: str = "",
) -> Response:
    target = await launch_target(dashboard, flow=flow or None, processors=processor or [], name=name)
    if target is None:
        raise HTTPException(404, f"there is no saved flow named {flow!r}")
    return page(request, dashboard, "pages/launch.html", {
        "target": target, "submission": Submission(), "active_page": "designer",
    })


@router.post("/launch")
async def launch_submit(request: Request, dashboard: DashboardDep) -> Response:
    form = await request.form()
    flow = str(form.get("flow") or "")
    processors = [str(v) for v in form.getlist("processor")]
    target = await launch_target(
        dashboard, flow=flow or None, processors=processors, name=str(form.get("name") or "")
    )
    if target is None:
        raise HTTPException(404, f"there is no saved flow named {flow!r}")
    submission = parse_form(target.fields, {k: str(v) for k, v in form.items()})
    submission.raw["run_retries"] = str(form.get("run_retries") or "")
    if submission.ok:
        try:
            retries = parse_retries(str(form.get("run_retries") or ""))
            run_id = await launch(dashboard, target, submission, retries=retries)
        except LaunchError as exc:
            submission.errors[""] = str(exc)
        else:
            where = f"/runs/{run_id}"
            if is_htmx(request):
                return Response(status_code=200, headers={"HX-Redirect": where})
            return RedirectResponse(where, status_code=303)
    context = {"target": target, "submission": submission, "active_page": "designer"}
    if is_htmx(request):
        return page(request, dashboard, "partials/launch_form.html", context)
    return page(request, dashboard, "pages/launch.html", context, status_code=422)
