"""Launching a flow from the dashboard: the form and ``POST /api/runs`` share this."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from datagraph import flows_store
from datagraph.exceptions import DatagraphError
from datagraph.io import IOVal

from .dashboard import Dashboard
from .designer import Design, assemble
from .forms import InputField, Submission, launch_fields

__all__ = ["LaunchError", "LaunchTarget", "launch", "launch_target"]


class LaunchError(Exception):
    """A launch the engine refused; the message says why."""


@dataclass
class LaunchTarget:
    """What is about to be launched: a saved flow, or processors from the designer."""

    #: The saved flow's name, or the name given in the designer (may be None).
    name: str | None
    #: Whether ``name`` is a saved flow.
    saved: bool
    design: Design
    fields: list[InputField]

    @property
    def processor_names(self) -> list[str]:
        return self.design.names


async def launch_target(
    dashboard: Dashboard, *, flow: str | None, processors: Sequence[str], name: str | None = None
) -> LaunchTarget | None:
    """The saved flow ``flow``, or else ``processors``; None when ``flow`` is not saved."""
    infos = {info.name: info for info in await dashboard.telemetry.processors()}
    fallback: dict[str, dict[str, Any]] = {}
    saved = False
    names = list(processors)
    if flow and not names:
        record = await flows_store.load_flow(dashboard.client, flow)
        if record is None:
            return None
        names = list(record.processor_names)
        fallback = {str(p.get("name")): p for p in record.processors}
        name, saved = record.name, True
    design = assemble(names, infos, fallback, name=name or None)
    fields = launch_fields(design.floating_inputs, design.specs, infos)
    return LaunchTarget(name=name or None, saved=saved, design=design, fields=fields)


async def launch(dashboard: Dashboard, target: LaunchTarget, submission: Submission) -> str:
    """Start the run; returns its id. Raises :class:`LaunchError` with a message for people."""
    supervisor = dashboard.supervisor
    if supervisor is None:
        raise LaunchError(
            "this dashboard is read-only: no supervisor is attached, so it cannot start runs "
            "(start it with --app, or attach a Supervisor before create_app())"
        )
    flow = target.design.flow
    if flow is None:
        problems = "; ".join(m.text for m in target.design.errors) or "it has no processors"
        raise LaunchError(f"the flow cannot run: {problems}")
    inputs = [IOVal(name=io, value=value) for io, values in submission.values.items() for value in values]
    run_id = uuid.uuid4().hex
    try:
        await supervisor.start_flow(flow, inputs=inputs, run_id=run_id)
    except DatagraphError as exc:
        raise LaunchError(str(exc)) from exc
    return run_id
