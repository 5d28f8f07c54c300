"""Live views over server-sent events, and the hub that shares one poller per view."""

from __future__ import annotations

from contextlib import AsyncExitStack

import anyio
import pytest

from datagraph import Flow, IOVal, Supervisor
from tests.web_support import SSEStream, open_dashboard, open_sse, web_slow
from web.hub import Feed, Hub
from web.views import RUN_EVENTS

pytestmark = pytest.mark.anyio


async def _slow_run(supervisor: Supervisor, n: int = 100_000) -> str:
    flow = Flow.from_processors(web_slow, name="web live").resolve()
    outputs = await supervisor.start_flow(flow, inputs=[IOVal(name="web_slow_n", value=n)])
    return outputs["web_slow_out"].run_id


async def test_run_stream_sends_fragments_with_edge_updates(supervisor: Supervisor) -> None:
    run_id = await _slow_run(supervisor)
    try:
        async with (
            open_dashboard(supervisor, poll_interval=0.2) as (app, _),
            open_sse(app, f"/events/runs/{run_id}") as stream,
        ):
            assert stream.status == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            seen: dict[str, str] = {}
            written: list[int] = []
            with anyio.fail_after(15):
                while len(written) < 2 or written[-1] <= written[0]:
                    event = await stream.next_event()
                    seen[event.event] = event.data
                    if event.event == "run-edges":
                        row = event.data.split('data-edge-id="edge-web_slow_out-out"', 1)[1]
                        cell = row.split('data-testid="edge-written">', 1)[1]
                        written.append(int(cell.split("<", 1)[0]))
            assert set(RUN_EVENTS) - {"run-error"} <= set(seen)
            assert 'id="edge-web_slow_out-out"' in seen["run-graph"]
            assert "queued" in seen["run-graph"]
            assert 'data-state="running"' in seen["run-header"]
            assert "%%" not in seen["run-graph"]  # every placeholder was filled
    finally:
        await supervisor.cancel(run_id)


async def test_unknown_run_stream_is_404(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor) as (app, _), open_sse(app, "/events/runs/no-such-run") as stream:
        assert stream.status == 404


async def test_fifty_viewers_share_one_poller(supervisor: Supervisor) -> None:
    run_id = await _slow_run(supervisor)
    key = f"run:{run_id}"
    try:
        async with open_dashboard(supervisor, poll_interval=0.2) as (app, _):
            hub: Hub = app.state.dashboard.hub
            started = hub.pollers_started
            async with AsyncExitStack() as stack:
                streams: list[SSEStream] = []
                for _ in range(50):
                    streams.append(await stack.enter_async_context(open_sse(app, f"/events/runs/{run_id}")))

                async def first_edges(stream: SSEStream) -> None:
                    await stream.until("run-edges")

                with anyio.fail_after(20):
                    async with anyio.create_task_group() as tg:
                        for stream in streams:
                            tg.start_soon(first_edges, stream)
                assert hub.pollers_started - started == 1
                assert hub.active_pollers == 1
                assert hub.subscribers(key) == 50
                polls = hub.polls
                with anyio.fail_after(10):
                    await streams[0].until("run-edges")
                    await streams[-1].until("run-edges")
                # The viewers were updated from the same few polls, not fifty times as many.
                assert hub.polls - polls <= 5
            # The last viewer to leave stopped the poller.
            assert not hub.has(key)
            assert hub.active_pollers == 0
    finally:
        await supervisor.cancel(run_id)


async def test_operations_stream(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor, ops_interval=0.2) as (app, _):
        async with open_sse(app, "/events/operations?state=failed&stuck_after=60") as stream:
            assert stream.status == 200
            names = set()
            with anyio.fail_after(10):
                while not {"ops-summary", "ops-workers", "ops-runs", "ops-hot-edges"} <= names:
                    names.add((await stream.next_event()).event)
            assert app.state.dashboard.hub.has("ops:failed:60")
        async with open_sse(app, "/events/operations?state=bogus") as stream:
            assert stream.status == 404


async def test_hub_only_sends_what_changed_and_survives_poll_errors() -> None:
    polls = 0

    async def poll() -> dict[str, str]:
        nonlocal polls
        polls += 1
        if polls == 2:
            raise RuntimeError("store went away")
        return {"a": "same", "b": f"poll {polls}"}

    feed = Feed(poll=poll, interval=lambda: 0.01, on_error=lambda exc: {"status": f"error: {exc}"})
    hub = Hub()
    async with hub.running():
        async with hub.subscribe("t", lambda: feed) as subscription:
            received = []
            with anyio.fail_after(10):
                async for name, data in subscription:
                    received.append((name, data))
                    if name == "b" and data == "poll 3":
                        break
        assert received[:2] == [("a", "same"), ("b", "poll 1")]
        assert ("status", "error: store went away") in received
        assert received.count(("a", "same")) == 1
        assert hub.active_pollers == 0
    with pytest.raises(RuntimeError, match="not running"):
        async with hub.subscribe("t", lambda: feed):
            pass
