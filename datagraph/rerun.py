"""Running a finished run again: same flow, same inputs (or edited ones).

When a run starts, its inputs are kept beside it (``keys.rerun(run_id)``,
signed like stream payloads, expiring with the run) as long as they encode to
at most the ``rerun_inputs_max_bytes`` setting (1 MiB by default); a run whose
inputs were larger keeps the reason instead, and cannot be run again as is.
The flow comes from the run's own plan, so a re-run does not depend on a
saved flow that may have changed since.

A re-run records where it comes from (``of``) and its origin lists it
(``run:<id>`` fields), both in the same hash, so lineage expires with the
runs themselves.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .context import Context
from .coordinator import Coordinator
from .exceptions import RerunError, RunError
from .flow import Flow
from .io import IOVal
from .plan import Plan
from .store import keys
from .store.client import pipeline, refused
from .store.scripts import TERMINAL

if TYPE_CHECKING:
    from .settings import Settings
    from .store.codec import Codec

__all__ = ["RerunInfo", "kept_inputs", "kept_inputs_field", "rerun", "rerun_info"]



_INPUTS = "inputs"
_OMITTED = "omitted"
_ORIGIN = "of"
_CHILD = "run:"
#: Re-runs listed per run (the newest).
MAX_LISTED_RERUNS = 50


def kept_inputs_field(codec: Codec, settings: Settings, given: Mapping[str, list[Any]]) -> list[Any]:
    """The field and value of a starting run's rerun hash: its inputs, or why they are not kept."""
    limit = settings.rerun_inputs_max_bytes
    payload = codec.encode_batch([dict(given)]) if limit else b""
    if limit and len(payload) <= limit:
        field: list[Any] = [_INPUTS, payload]
    else:
        reason = (
            f"its inputs encode to {len(payload):,} bytes, more than the {limit:,} kept for re-runs "
            "(setting rerun_inputs_max_bytes)"
            if limit else "keeping inputs for re-runs is off (setting rerun_inputs_max_bytes is 0)"
        )
        field = [_OMITTED, reason]
    return field


@dataclass(frozen=True)
class RerunInfo:
    """What the dashboard shows about running a run again."""

    run_id: str
    #: The run's state ("running", "failed", ...).
    state: str
    #: Whether its inputs were kept (so it can be run again once it has ended).
    inputs_kept: bool
    #: Why they were not, for people.
    omitted: str | None
    #: The run this one re-runs, if any.
    rerun_of: str | None
    #: Its re-runs, oldest first.
    reruns: tuple[str, ...]

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    @property
    def can_rerun(self) -> bool:
        return self.finished and self.inputs_kept

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "state": self.state, "inputs_kept": self.inputs_kept,
            "omitted": self.omitted, "rerun_of": self.rerun_of, "reruns": list(self.reruns),
            "can_rerun": self.can_rerun,
        }


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


async def rerun_info(supervisor: Context, run_id: str) -> RerunInfo | None:
    """The run's re-run facts, or None when the run is unknown (or expired)."""
    runtime = await supervisor.runtime()
    key = keys.rerun(run_id)
    doing = f"reading the re-run record of run {run_id}"
    replies, _ = await pipeline(
        runtime.client,
        [["HGET", keys.run(run_id), "state"], ["HEXISTS", key, _INPUTS], ["HGET", key, _OMITTED],
         ["HGET", key, _ORIGIN], ["HKEYS", key]],
        retry_for=supervisor.settings.reconnect_timeout, doing=doing,
    )
    refused(replies, doing)
    state, has_inputs, omitted, origin, fields = replies
    if state is None:
        return None
    children = [name for f in fields or () if (name := _text(f) or "").startswith(_CHILD)]
    if children:
        (started,), _ = await pipeline(
            runtime.client, [["HMGET", key, *children]],
            retry_for=supervisor.settings.reconnect_timeout, doing=doing,
        )
        refused([started], doing)
        when = {c: float(_text(t) or 0) for c, t in zip(children, started, strict=True)}
        children.sort(key=lambda c: when[c])
    return RerunInfo(
        run_id=run_id,
        state=_text(state) or "",
        inputs_kept=bool(has_inputs),
        omitted=_text(omitted) if not has_inputs else None,
        rerun_of=_text(origin),
        reruns=tuple(c.removeprefix(_CHILD) for c in children)[-MAX_LISTED_RERUNS:],
    )


async def _record(supervisor: Context, run_id: str) -> tuple[Plan, str, bytes | None, str | None]:
    runtime = await supervisor.runtime()
    doing = f"reading run {run_id} to run it again"
    replies, _ = await pipeline(
        runtime.client,
        [["HMGET", keys.run(run_id), "plan", "state"], ["HMGET", keys.rerun(run_id), _INPUTS, _OMITTED]],
        retry_for=supervisor.settings.reconnect_timeout, doing=doing,
    )
    refused(replies, doing)
    (raw_plan, state), (payload, omitted) = replies
    if raw_plan is None:
        raise RunError(f"run {run_id} is unknown (or expired)", run_id=run_id)
    return Plan.from_json(raw_plan), _text(state) or "", payload, _text(omitted)


async def kept_inputs(supervisor: Context, run_id: str) -> tuple[Plan, dict[str, list[Any]]]:
    """The run's plan and the inputs it was started with; RerunError when they were not kept."""
    plan, _, payload, omitted = await _record(supervisor, run_id)
    if payload is None:
        why = omitted or "it was started before inputs were kept, or its record expired"
        raise RerunError(f"run {run_id} cannot be run again with the same inputs: {why}", run_id=run_id)
    (given,) = supervisor.codec.decode_batch(payload, f"the kept inputs of run {run_id}")
    return plan, {str(io): list(values) for io, values in dict(given).items()}


async def rerun(
    supervisor: Coordinator, run_id: str, *, inputs: Mapping[str, list[Any]] | None = None
) -> str:
    """Start run ``run_id``'s flow again; returns the new run's id.

    With ``inputs=None`` the new run gets the inputs ``run_id`` was started
    with; otherwise ``inputs`` (io -> values). Only a run that has ended can
    be run again (:class:`RerunError` otherwise, and when its inputs were not
    kept).
    """
    plan, state, _, _ = await _record(supervisor, run_id)
    if state not in TERMINAL:
        raise RerunError(
            f"run {run_id} is still {state}; wait for it to end (or cancel it) before running it again",
            run_id=run_id,
        )
    if inputs is None:
        plan, given = await kept_inputs(supervisor, run_id)
    else:
        given = {io: list(values) for io, values in inputs.items()}
    flow = Flow.from_spec(plan.flow).resolve()
    new_id = uuid.uuid4().hex
    values = [IOVal(name=io, value=v) for io, vs in given.items() for v in vs]
    await supervisor.start_flow(flow, inputs=values, all_outputs=not plan.trim, run_id=new_id)
    runtime = await supervisor.runtime()
    doing = f"linking run {new_id} to the run it re-runs, {run_id}"
    ttl = str(int(supervisor.settings.max_run_duration))
    replies, attempts = await pipeline(
        runtime.client,
        [["HSET", keys.rerun(new_id), _ORIGIN, run_id],
         ["HSET", keys.rerun(run_id), f"{_CHILD}{new_id}", json.dumps(time.time())],
         # The origin has ended, so its keys expire within the retention (NX: a record kept
         # from before re-runs were linked gets that expiry too, never a longer one).
         ["EXPIRE", keys.rerun(run_id), str(int(supervisor.settings.retention)), "NX"],
         ["EXPIRE", keys.rerun(new_id), ttl, "NX"]],
        retry_for=supervisor.settings.reconnect_timeout, doing=doing,
    )
    if attempts == 1:
        refused(replies, doing)
    return new_id
