"""The designer: assemble a flow from registered processors, save, load, export.

The page holds the selection (``processor`` fields, in order); each add or
remove asks ``/designer/workspace`` to assemble it again and gets back the
graph, the messages and the export, and the address bar follows
(``HX-Push-Url``), so a design is a link that can be shared or reloaded, and
the browser's Back and Forward are undo and redo. Which node is inspected
(``select=<processor>`` or ``io=<name>``) is in the address too, replaced
rather than pushed: selecting is not a change to undo.

Nodes of the graph are links to the same design with that node selected, so
the graph works as plain links; ``static/designer.js`` turns them into htmx
requests and adds the keys (Enter selects, Delete removes, Ctrl-Z and
Ctrl-Shift-Z go back and forward).
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response

from datagraph import flows_store
from datagraph.exceptions import DatagraphError
from datagraph.processor import Processor
from datagraph.snapshots import INPUT, OUTPUT, ProcessorInfo

from ..dashboard import Dashboard, get_dashboard
from ..designer import Design, assemble, export_python
from ..diagram import diagram
from ..graph import GraphRenderError, render_svg_async
from ..palette import Registry, grouped
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


#: Widest (points) the designer lays a flow out left to right: its graph shares the
#: card with the inspector.
DESIGN_WIDTH_PT = 420


async def design_svg(
    design: Design, links: dict[str, str] | None = None, selected: str = ""
) -> tuple[str, str | None]:
    """The design's graph as SVG, or why it could not be drawn; ``selected`` is the
    id of the node to mark (``node-<processor>``, ``input-<io>``, ``output-<io>``)."""
    if not design.specs:
        return "", None
    marked = design.in_cycle | design.duplicate_producers
    node_classes = {
        spec["name"]: ("state-failed problem" if spec["name"] in marked
                       else "offline" if spec["name"] in design.offline else "state-pending")
        for spec in design.specs
    }
    edge_classes: dict[tuple[str, str], str] = {}
    edge_notes: dict[tuple[str, str], str] = {}
    for typed in design.edges:
        e = typed.edge
        key = (e.io, e.target)
        if {e.source, e.target} <= design.in_cycle:
            edge_classes[key] = "heat-4"
        elif typed.mismatch is not None:
            edge_classes[key] = "mismatch"
        else:
            edge_classes.setdefault(key, "heat-0")
        if typed.mismatch is not None:
            edge_notes[key] = f"{typed.type} ≠ {typed.read_as}"
        elif typed.type:
            edge_notes.setdefault(key, typed.type)
    dot = diagram(
        [(s["name"], bool(s.get("wait"))) for s in design.specs], [t.edge for t in design.edges],
        live=False, node_classes=node_classes, edge_classes=edge_classes, edge_notes=edge_notes,
        links=links, selected=selected, max_width_pt=DESIGN_WIDTH_PT,
    ).dot
    try:
        return await render_svg_async(dot), None
    except GraphRenderError as exc:
        return "", str(exc)


def designer_url(
    names: list[str], name: str = "", source: str = "", *, select: str = "", io: str = ""
) -> str:
    query = [("processor", n) for n in names]
    if name:
        query.append(("name", name))
    if source:
        query.append(("flow", source))
    if select:
        query.append(("select", select))
    if io:
        query.append(("io", io))
    return "/designer" + (f"?{urlencode(query)}" if query else "")


def _node_links(design: Design, name: str, source: str) -> dict[str, str]:
    links = {
        f"node-{n}": designer_url(design.names, name, source, select=n) for n in design.names
    }
    for typed in design.edges:
        e = typed.edge
        if e.source == INPUT:
            links[f"input-{e.io}"] = designer_url(design.names, name, source, io=e.io)
        if e.target == OUTPUT:
            links[f"output-{e.io}"] = designer_url(design.names, name, source, io=e.io)
    return links


async def _workspace_context(
    dashboard: Dashboard, names: list[str], name: str, source: str, *, select: str = "", io: str = "",
    **extra: Any,
) -> dict[str, Any]:
    design, infos = await _design(dashboard, names, name, source)
    registry = Registry(infos)
    if select not in design.names:
        select = ""
    links = _node_links(design, name, source)
    if select:
        marked = f"node-{select}"
    else:
        marked = next((i for i in (f"input-{io}", f"output-{io}") if io and i in links), "")
    svg, graph_error = await design_svg(design, links, marked)
    base = [*(("processor", n) for n in design.names), ("name", name)]
    return {
        "design": design, "svg": svg, "graph_error": graph_error, "name": name, "source": source,
        "export": export_python(design.specs, name or None) if design.specs else "",
        "infos": infos, "selected": set(design.names), "registry": registry,
        "suggestions": registry.suggestions(design.names, design.floating_inputs, design.final_outputs),
        "select": select, "select_info": registry.infos.get(select) if select else None,
        "select_spec": next((s for s in design.specs if s["name"] == select), None) if select else None,
        "io": io,
        "launch_url": "/launch?" + urlencode(base),
        "export_url": "/designer/export.py?" + urlencode(base),
        **extra,
    }


@router.get("/designer")
async def designer_page(
    request: Request, dashboard: DashboardDep, processor: Names = None, flow: str = "", name: str = "",
    select: str = "", io: str = "",
) -> Response:
    names = list(processor or [])
    notice = None
    if flow and not names:
        record = await flows_store.load_flow(dashboard.client, flow)
        if record is None:
            notice = f"there is no saved flow named {flow!r}"
        else:
            names, name = list(record.processor_names), record.name
    context = await _workspace_context(dashboard, names, name, flow, select=select, io=io, notice=notice)
    await _add_page_context(dashboard, context)
    return page(request, dashboard, "pages/designer.html", context)


async def _add_page_context(dashboard: Dashboard, context: dict[str, Any]) -> None:
    """What the whole page shows beyond the workspace: the palette and the saved flows."""
    context.update(
        saved=await flows_store.list_flows(dashboard.client), active_page="designer", q="",
        groups=grouped(context["infos"]),
    )


@router.get("/designer/workspace")
async def designer_workspace(
    request: Request,
    dashboard: DashboardDep,
    processor: Names = None,
    name: str = "",
    flow: str = "",
    add: str = "",
    remove: str = "",
    select: str = "",
    io: str = "",
) -> Response:
    """The workspace for a design, after adding ``add`` and removing ``remove``.

    A change is pushed onto the browser's history (so Back undoes it); only
    selecting another node replaces the current entry.
    """
    names = [n for n in (processor or []) if n != remove]
    if add and add not in names:
        names.append(add)
    if select == remove:
        select = ""
    context = await _workspace_context(dashboard, names, name, flow, select=select, io=io)
    headers: dict[str, str] = {}
    if is_htmx(request):
        url = designer_url(names, name, flow, select=context["select"], io=io)
        headers = {"HX-Push-Url" if (add or remove) else "HX-Replace-Url": url}
    return page(request, dashboard, "partials/designer_workspace.html", context, headers=headers)


@router.get("/designer/palette")
async def designer_palette(request: Request, dashboard: DashboardDep, q: str = "") -> Response:
    everything = await dashboard.telemetry.processors()
    infos = [i for i in everything if matches(i, q)] if q.strip() else everything
    return page(request, dashboard, "partials/designer_palette.html", {
        "groups": grouped(infos), "infos": infos, "total": len(everything), "q": q,
    })


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
            await _add_page_context(dashboard, context)
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
