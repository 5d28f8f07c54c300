"""Server-sent events: live fragments of a run view and of the operations page.

Each stream is a sequence of events named after the element they replace
(``sse-swap``), whose data is that element's new inner HTML, rendered from
the same partial as the page. Every viewer of one topic shares one poller
(:mod:`web.hub`); a viewer is sent a fragment only when it changed. A
comment ping every 15 s keeps proxies from closing idle streams.

- ``/events/runs/{run_id}``: ``run-header``, ``run-bottleneck``, ``run-graph``,
  ``run-history``, ``run-edges``, ``run-processors``, ``run-previews``,
  ``run-error``, ``live-status``; once
  a second while the run runs, every 5 s after it ended.
- ``/events/operations?state=&stuck_after=``: ``ops-summary``,
  ``ops-workers``, ``ops-runs``, ``ops-failed``, ``ops-stuck``,
  ``ops-hot-edges``, ``live-status``; every 2 s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query
from sse_starlette import EventSourceResponse, ServerSentEvent

from datagraph.snapshots import RUN_STATES

from ..dashboard import Dashboard, get_dashboard
from ..hub import Feed
from ..views import ops_feed, run_feed
from .pages import stuck_seconds

__all__ = ["PING_SECONDS", "router"]

router = APIRouter()

DashboardDep = Annotated[Dashboard, Depends(get_dashboard)]

PING_SECONDS = 15


async def _events(
    dashboard: Dashboard, key: str, make_feed: Callable[[], Feed]
) -> AsyncIterator[ServerSentEvent]:
    async with dashboard.hub.subscribe(key, make_feed) as subscription:
        async for name, data in subscription:
            yield ServerSentEvent(data=data, event=name)


@router.get("/events/runs/{run_id}")
async def run_events(dashboard: DashboardDep, run_id: str) -> EventSourceResponse:
    key = f"run:{run_id}"
    # Only the first viewer pays for this check: later ones join the running poller.
    if not dashboard.hub.has(key) and await dashboard.telemetry.run(run_id) is None:
        raise HTTPException(404, f"run {run_id} is unknown, or has expired")
    return EventSourceResponse(
        _events(dashboard, key, lambda: run_feed(dashboard, run_id)), ping=PING_SECONDS
    )


@router.get("/events/operations")
async def operations_events(
    dashboard: DashboardDep,
    state: str = "",
    stuck_after: Annotated[int | None, Query(ge=10, le=7 * 86400)] = None,
) -> EventSourceResponse:
    if state and state not in RUN_STATES:
        raise HTTPException(404, f"unknown run state {state!r}; the states are {', '.join(RUN_STATES)}")
    seconds = stuck_seconds(dashboard, stuck_after)
    key = f"ops:{state}:{seconds:g}"
    return EventSourceResponse(
        _events(dashboard, key, lambda: ops_feed(dashboard, state=state or None, stuck_after=seconds)),
        ping=PING_SECONDS,
    )
