"""The designer: assemble a flow from registered processors, save, load, export.

The page holds the selection (``processor`` fields, in order); each add or
remove asks ``/designer/workspace`` to assemble it again and gets back the
graph, the messages and the export, and the address bar follows
(``HX-Push-Url``), so a design is a link that can be shared or reloaded.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response

from datagraph import flows_store
from datagraph.exceptions import DatagraphError
from datagraph.processor import Processor
from datagraph.snapshots import ProcessorInfo

from ..dashboard import Dashboard, get_dashboard
from ..designer import Design, assemble, export_python
from ..diagram import design_edges, diagram
from ..graph import GraphRenderError, render_svg_async
from .common import is_htmx, page
from .pages import matches

__all__ = ["router"]

router = APIRouter()

DashboardDep = Annotated[Dashboard, Depends(get_dashboard)]
Names = Annotated[list[str] | None, Query()]


async def _design(
    dashboard: Dashboard, names: list[str], name: str, source: str
) -> tuple[Design, list[ProcessorInfo]]:
    infos = await dashboard.telemetry.processors()
    fallback: dict[str, Any] = {}
    if source:
        record = await flows_store.load_flow(dashboard.client, source)
        if record is not None:
            fallback = {str(p.get("name")): p for p in record.processors}
    return assemble(names, {i.name: i for i in infos}, fallback, name=name or None), infos


async def design_svg(design: Design) -> tuple[str, str | None]:
    """The design's graph as SVG, or why it could not be drawn."""
    if not design.specs:
        return "", None
    marked = design.in_cycle | design.duplicate_producers
    node_classes = {
        spec["name"]: "state-failed problem" if spec["name"] in marked
        else "offline" if spec["name"] in design.offline else "state-pending"
        for spec in design.specs
    }
    edges = design_edges(design.specs)
    edge_classes = {
        (e.io, e.target): "heat-4" if {e.source, e.target} <= design.in_cycle else "heat-0"
        for e in edges
    }
    dot = diagram(
        [(s["name"], bool(s.get("wait"))) for s in design.specs], edges,
        live=False, node_classes=node_classes, edge_classes=edge_classes,
    ).dot
    try:
        return await render_svg_async(dot), None
    except GraphRenderError as exc:
        return "", str(exc)


def designer_url(names: list[str], name: str = "", source: str = "") -> str:
    query = [("processor", n) for n in names]
    if name:
        query.append(("name", name))
    if source:
        query.append(("flow", source))
    return "/designer" + (f"?{urlencode(query)}" if query else "")


async def _workspace_context(
    dashboard: Dashboard, names: list[str], name: str, source: str, **extra: Any
) -> dict[str, Any]:
    design, infos = await _design(dashboard, names, name, source)
    svg, graph_error = await design_svg(design)
    return {
        "design": design, "svg": svg, "graph_error": graph_error, "name": name, "source": source,
        "export": export_python(design.specs, name or None) if design.specs else "",
        "infos": infos, "selected": set(design.names),
        "launch_url": "/launch?" + urlencode([*(("processor", n) for n in design.names), ("name", name)]),
        "export_url": "/designer/export.py?" + urlencode(
            [*(("processor", n) for n in design.names), ("name", name)]
        ),
        **extra,
    }


@router.get("/designer")
async def designer_page(
    request: Request, dashboard: DashboardDep, processor: Names = None, flow: str = "", name: str = ""
) -> Response:
    names = list(processor or [])
    notice = None
    if flow and not names:
        record = await flows_store.load_flow(dashboard.client, flow)
        if record is None:
            notice = f"there is no saved flow named {flow!r}"
        else:
            names, name = list(record.processor_names), record.name
    context = await _workspace_context(dashboard, names, name, flow, notice=notice)
    context.update(saved=await flows_store.list_flows(dashboard.client), active_page="designer", q="")
    return page(request, dashboard, "pages/designer.html", context)


@router.get("/designer/workspace")
async def designer_workspace(
    request: Request,
    dashboard: DashboardDep,
    processor: Names = None,
    name: str = "",
    flow: str = "",
    add: str = "",
    remove: str = "",
) -> Response:
    names = [n for n in (processor or []) if n != remove]
    if add and add not in names:
        names.append(add)
    context = await _workspace_context(dashboard, names, name, flow)
    headers = {"HX-Push-Url": designer_url(names, name, flow)} if is_htmx(request) else {}
    return page(request, dashboard, "partials/designer_workspace.html", context, headers=headers)


@router.get("/designer/palette")
async def designer_palette(request: Request, dashboard: DashboardDep, q: str = "") -> Response:
    infos = [i for i in await dashboard.telemetry.processors() if matches(i, q)]
    return page(request, dashboard, "partials/designer_palette.html", {"infos": infos, "q": q})


@router.get("/designer/export.py")
async def designer_export(dashboard: DashboardDep, processor: Names = None, name: str = "") -> Response:
    design, _ = await _design(dashboard, list(processor or []), name, "")
    filename = "".join(c if c.isalnum() else "_" for c in name) or "flow"
    return PlainTextResponse(
        export_python(design.specs, name or None),
        media_type="text/x-python",
        headers={"Content-Disposition": f'attachment; filename="{filename}.py"'},
    )


@router.post("/designer/save")
async def designer_save(request: Request, dashboard: DashboardDep) -> Response:
    form = await request.form()
    names = [str(v) for v in form.getlist("processor")]
    name = str(form.get("name") or "")
    source = str(form.get("flow") or "")
    design, _ = await _design(dashboard, names, name, source)
    error = None
    try:
        saved = await flows_store.save_flow(
            dashboard.client, name, [Processor.from_spec(s) for s in design.specs]
        )
    except DatagraphError as exc:
        error = str(exc)
    else:
        name = source = saved.name
    if not is_htmx(request):
        if error:
            context = await _workspace_context(dashboard, names, name, source, save_error=error)
            context.update(saved=await flows_store.list_flows(dashboard.client), active_page="designer", q="")
            return page(request, dashboard, "pages/designer.html", context, status_code=422)
        return RedirectResponse(designer_url([], "", name), status_code=303)
    context = await _workspace_context(
        dashboard, names, name, source, save_error=error, saved_notice=None if error else name,
        saved=await flows_store.list_flows(dashboard.client), oob_saved=True,
    )
    headers = {"HX-Push-Url": designer_url(names, name, source)} if not error else {}
    return page(request, dashboard, "partials/designer_workspace.html", context, headers=headers)


def _copy_name(name: str, taken: set[str]) -> str:
    base = f"{name} copy"[:80]
    candidate, n = base, 2
    while candidate in taken:
        candidate = f"{base[:75]} {n}"
        n += 1
    return candidate


@router.post("/flows/duplicate")
async def duplicate_flow(request: Request, dashboard: DashboardDep) -> Response:
    form = await request.form()
    name = str(form.get("name") or "")
    existing = await flows_store.list_flows(dashboard.client)
    new_name = str(form.get("new_name") or "") or _copy_name(name, {f.name for f in existing})
    error = None
    try:
        await flows_store.duplicate_flow(dashboard.client, name, new_name)
    except DatagraphError as exc:
        error = str(exc)
    return await _saved_list_response(request, dashboard, error, f"saved a copy as {new_name!r}")


@router.post("/flows/delete")
async def delete_flow(request: Request, dashboard: DashboardDep) -> Response:
    form = await request.form()
    name = str(form.get("name") or "")
    deleted = await flows_store.delete_flow(dashboard.client, name)
    error = None if deleted else f"there is no saved flow named {name!r}"
    return await _saved_list_response(request, dashboard, error, f"deleted {name!r}")


async def _saved_list_response(
    request: Request, dashboard: Dashboard, error: str | None, done: str
) -> Response:
    if not is_htmx(request):
        if error:
            raise HTTPException(409 if "already exists" in error else 404, error)
        return RedirectResponse("/designer", status_code=303)
    return page(request, dashboard, "partials/saved_flows.html", {
        "saved": await flows_store.list_flows(dashboard.client),
        "flash": error or done, "flash_level": "error" if error else "ok",
    })
