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

__all__ = ["MAX_RETRIES", "LaunchError", "LaunchTarget", "launch", "launch_target", "parse_retries"]


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


#: Most retries the dashboard lets a launch ask for.
MAX_RETRIES = 20


def parse_retries(text: str | None) -> int | None:
    """The launch form's retries field: None when empty; LaunchError when not 0..MAX_RETRIES."""
    if text is None or not text.strip():
        return None
    try:
        retries = int(text.strip())
    except ValueError:
        retries = -1
    if not 0 <= retries <= MAX_RETRIES:
        raise LaunchError(
            f"retries must be a whole number from 0 to {MAX_RETRIES}, got {text!r}; "
            "leave it empty for the flow's default"
        )
    return retries


async def launch(
    dashboard: Dashboard, target: LaunchTarget, submission: Submission, *, retries: int | None = None
) -> str:
    """Start the run; returns its id. Raises :class:`LaunchError` with a message for people.

    ``retries`` (None: the ``retries`` setting) starts the run again when a worker is
    lost and the like; this dashboard process drives those retries (``datagraph.retries``).
    """
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
        await supervisor.start_flow(flow, inputs=inputs, run_id=run_id, retries=retries)
    except DatagraphError as exc:
        raise LaunchError(str(exc)) from exc
    return run_id
