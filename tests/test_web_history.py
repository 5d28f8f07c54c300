"""Run history in the dashboard: the JSON API, the heatmap, its live updates, the operations page."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import anyio
import pytest

from datagraph import Supervisor
from datagraph.history import RunHistory, Samples, build_history
from tests import heatmap_reference
from tests.history_support import SLOW_FLOW, inputs, run_slow_flow
from tests.web_support import open_dashboard, open_sse, text_of
from web.heatmap import heatmap
from web.histories import REDRAW_SECONDS, RunHistories

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]


async def test_history_api_and_run_page(supervisor: Supervisor) -> None:
    run_id = await run_slow_flow(supervisor)
    async with open_dashboard(supervisor) as (_, client):
        response = await client.get(f"/api/runs/{run_id}/history")
        assert response.status_code == 200
        data = response.json()
        assert data["interval"] == 1.0
        edge = next(e for e in data["edges"] if e["io"] == "hist_nums")
        assert edge["source"] == "hist_source" and edge["target"] == "hist_slow"
        assert len(edge["t"]) == len(edge["backlog"]) == len(edge["throughput"]) >= 3
        assert max(edge["backlog"]) >= 80 and edge["backlog"][-1] == 0
        slow = next(p for p in data["processors"] if p["name"] == "hist_slow")
        assert all(0.0 <= share <= 1.0 for share in slow["busy"] + slow["idle"] + slow["backpressured"])
        assert data["bottleneck"]["processor"] == "hist_slow"
        assert data["bottleneck"]["until"] is not None

        later = (await client.get(f"/api/runs/{run_id}/history", params={"since": edge["t"][-1]})).json()
        assert all(e["t"] == [edge["t"][-1]] for e in later["edges"])
        assert (await client.get("/api/runs/nope/history")).status_code == 404

        page = await client.get(f"/runs/{run_id}")
        assert page.status_code == 200
        html = page.text
        assert 'data-testid="heatmap"' in html
        assert 'data-processor="hist_slow"' in html
        assert "hist_slow was the bottleneck from" in text_of(html)
        # One row per edge, the slow edge red at some point, with figures on hover.
        assert html.count('class="edge-row"') >= 2 * 4  # both drawings (fill, throughput)
        row = html.split('<g class="edge-row" data-label="hist_nums: hist_source \u2192 hist_slow">', 1)[1]
        row = row.split("</g>", 1)[0]
        assert '<rect class="heat-4"' in row and "queued (100% of 100)" in row
        assert 'data-testid="edge-trend"' in html and "<polyline" in html


async def test_dashboard_started_after_the_worker_exited_tells_the_story(valkey_url: str) -> None:
    """The history is kept by the store: a worker that is gone left the whole run's story."""
    result = await anyio.run_process(
        [sys.executable, "-m", "tests.history_support", valkey_url], cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    run_id = result.stdout.decode().split()[-1]
    Supervisor.detach()
    async with open_dashboard(redis_url=valkey_url) as (_, client):
        data = (await client.get(f"/api/runs/{run_id}/history")).json()
        assert data["bottleneck"]["processor"] == "hist_slow"
        assert "its input `hist_nums` is full" in data["bottleneck"]["reason"]
        html = (await client.get(f"/runs/{run_id}")).text
        assert 'data-testid="heatmap"' in html and "hist_slow was the bottleneck" in text_of(html)


async def test_heatmap_grows_over_sse(supervisor: Supervisor) -> None:
    outputs = await supervisor.start_flow(SLOW_FLOW, inputs(count=10**7, slow=10**7))
    run_id = outputs["hist_out"].run_id
    try:
        async with (
            open_dashboard(supervisor, poll_interval=0.2) as (app, _),
            open_sse(app, f"/events/runs/{run_id}") as stream,
        ):
            # The heatmap grows, and the slow stage is named at the top of the page while
            # it holds the flow back (each fragment is sent when it changes, in any order).
            samples: list[int] = []
            named = ""
            with anyio.fail_after(30):
                while len(samples) < 2 or samples[-1] <= samples[0] or "hist_slow is the" not in named:
                    event = await stream.next_event()
                    if event.event == "run-history":
                        found = re.search(r'data-samples="(\d+)"', event.data)
                        if found:
                            samples.append(int(found.group(1)))
                    elif event.event == "run-bottleneck":
                        named = text_of(event.data)
            assert "hist_slow is the bottleneck since" in named
    finally:
        await supervisor.cancel(run_id)


async def test_operations_page_shows_trend_and_bottleneck(supervisor: Supervisor) -> None:
    outputs = await supervisor.start_flow(SLOW_FLOW, inputs(count=10**7, slow=10**7))
    run_id = outputs["hist_out"].run_id
    try:
        async with open_dashboard(supervisor) as (_, client):
            with anyio.fail_after(20):
                while True:
                    html = (await client.get("/operations")).text
                    pattern = rf'data-testid="ops-trend" data-run-id="{run_id}" data-bottleneck="(\w*)"'
                    row = re.search(pattern, html)
                    assert row is not None, "the running run is not listed with its trend"
                    if row.group(1) == "hist_slow":
                        break
                    await anyio.sleep(0.5)
            assert "hist_slow is the bottleneck since" in text_of(html)
            assert 'class="spark spark-rate"' in html
    finally:
        await supervisor.cancel(run_id)


def test_heatmap_of_thirty_edges_over_an_hour_stays_bounded() -> None:
    """3,600 one-second samples of a 30-edge chain: at most MAX_COLUMNS columns, and readable."""
    from tests.test_history import Script, make_plan

    procs = [(f"p{i}", [f"io{i}"], [f"io{i + 1}"], False) for i in range(30)]
    plan = make_plan(procs, limit=1000)
    script = Script()
    for second in range(3600):
        lag = (second * 37) % 1000
        script.second(
            {name: (0.5, 0.3, 0.2) for name, *_ in procs},
            {(f"io{i + 1}", f"p{i + 1}"): lag for i in range(29)},
            written={f"io{i + 1}": second * 100 for i in range(29)},
        )
    drawn = heatmap(build_history("r", plan, "running", Samples.from_mappings(script.samples)))
    assert drawn is not None
    assert drawn.columns == 120 and drawn.column_seconds == pytest.approx(3599 / 120)
    assert drawn.fill.count('class="edge-row"') == 30  # the run input and 29 in-flow edges
    assert drawn.fill.count('class="band-row"') == 30
    # Bounded: at most one rectangle per row and column, each with its figures.
    assert drawn.fill.count("<rect") <= 60 * 120
    assert drawn.fill.count("<rect") == drawn.fill.count("<title>") - 1 - 60


def _varied_history() -> RunHistory:
    """A run with a bottleneck, a waiting stage, states that change, a gap in its samples
    and repeated figures (cells that merge)."""
    from tests.test_history import Script, make_plan

    procs = [
        ("src", ["n"], ["a"], False), ("mid", ["a"], ["b"], False), ("end", ["b"], ["c"], False),
        ("agg", ["c"], [], True),
    ]
    plan = make_plan(procs, limit=100)
    script = Script()
    for second in range(70):
        if second == 40:
            script.at += 25  # no sample for 25 s: some columns have none of their own
        slow = 20 <= second < 35
        script.second(
            {
                "src": (0.2, 0.0, 0.8) if slow else (0.4, 0.6, 0.0),
                "mid": (0.95, 0.0, 0.05) if slow else (0.5, 0.5, 0.0),
                "end": (0.1, 0.9, 0.0),
            },
            {("a", "mid"): 97 if slow else (second * 7) % 60, ("b", "end"): 3 if second % 10 else 0},
            states={
                "agg": "pending" if second < 60 else "running",
                "src": "done" if second > 65 else "running",
            },
            written={"a": second * 50 if second < 50 else 2500, "b": second * 40},
        )
    return build_history("r", plan, "running", Samples.from_mappings(script.samples))


@pytest.mark.parametrize("columns", [7, 50, 120])
def test_heatmap_draws_what_the_cell_by_cell_drawing_drew(columns: int) -> None:
    """The faster drawing (figures formatted once per value, bands drawn once, one slice
    per bucket) gives the same two SVGs, character for character, as the drawing it replaced."""
    history = _varied_history()
    assert history.bottleneck is not None and history.bottleneck.processor == "mid"
    drawn = heatmap(history, max_columns=columns)
    before = heatmap_reference.heatmap(history, max_columns=columns)
    assert drawn is not None and before is not None
    assert drawn.columns == before.columns == min(columns, len(history.t))
    assert drawn.column_seconds == before.column_seconds
    assert drawn.fill == before.fill
    assert drawn.throughput == before.throughput
    assert "band-pending" in drawn.fill and "heat-4" in drawn.fill and "tp-0" in drawn.throughput


def test_a_processor_state_from_the_store_cannot_break_out_of_the_heatmap_markup() -> None:
    """A state is text a worker wrote to the store: it is escaped in the band's class and title."""
    from tests.test_history import Script, make_plan

    plan = make_plan([("src", ["n"], ["a"], False), ("snk", ["a"], [], False)], limit=100)
    script = Script()
    for _ in range(5):
        script.second(
            {"src": (0.5, 0.0, 0.5), "snk": (0.5, 0.0, 0.5)},
            {("a", "snk"): 1},
            states={"src": 'x"><script>alert(1)</script>'},
            written={"a": 10},
        )
    drawn = heatmap(build_history("r", plan, "running", Samples.from_mappings(script.samples)))
    assert drawn is not None
    assert "<script>" not in drawn.fill and 'x"' not in drawn.fill
    assert "band-x&#34;&gt;&lt;script&gt;" in drawn.fill


async def test_a_viewed_history_is_read_again_only_for_what_is_new(supervisor: Supervisor) -> None:
    """The page, its feed and the API share one history per run: within the redraw interval
    it is not read at all; then only newer samples are read, and a running run's history
    grows; once the run has ended and nothing is new, nothing is built or drawn again."""
    outputs = await supervisor.start_flow(SLOW_FLOW, inputs(count=10**7, slow=10**7))
    run_id = outputs["hist_out"].run_id
    now = [0.0]
    histories = RunHistories(clock=lambda: now[0])
    try:
        async with open_dashboard(supervisor) as (app, client):
            dashboard = app.state.dashboard
            dashboard.histories = histories
            telemetry = dashboard.telemetry
            with anyio.fail_after(20):
                while True:
                    first = await histories.get(telemetry, run_id, fresh=True)
                    if first is not None and len(first.history.t) >= 2:
                        break
                    await anyio.sleep(0.3)
            reads, builds = histories.reads, histories.builds
            # Within the interval: the page, the API and another get share it, unread.
            page = (await client.get(f"/runs/{run_id}")).text
            assert f'data-samples="{len(first.history.t)}"' in page
            api = (await client.get(f"/api/runs/{run_id}/history")).json()
            assert api["t"] == list(first.history.t)
            assert await histories.get(telemetry, run_id) is first
            assert (histories.reads, histories.builds) == (reads, builds)
            # Later: the new samples are read and the history grows, the old ones kept.
            await anyio.sleep(2.5)
            now[0] += REDRAW_SECONDS
            later = await histories.get(telemetry, run_id)
            assert later is not None and later is not first
            assert histories.reads == reads + 1 and histories.builds == builds + 1
            assert len(later.history.t) > len(first.history.t)
            assert later.history.t[: len(first.history.t)] == first.history.t
            page = (await client.get(f"/runs/{run_id}")).text
            assert f'data-samples="{len(later.history.t)}"' in page
            assert later.drawing is not None and later.drawing is later.drawing  # drawn once
            # Ended: one more reading sees the final state, then nothing is new.
            await supervisor.cancel(run_id)
            assert await supervisor.wait(run_id, timeout=10) == "cancelled"
            await anyio.sleep(1.5)  # any last sample of a stopping processor has landed
            ended = await histories.get(telemetry, run_id, fresh=True)
            assert ended is not None and ended.history.state == "cancelled"
            builds = histories.builds
            again = await histories.get(telemetry, run_id, fresh=True)
            assert again is ended and histories.builds == builds
            assert api["edges"][0]["io"] == again.history.edges[0].io
    finally:
        await supervisor.cancel(run_id)


async def test_the_history_api_answers_what_telemetry_reads(supervisor: Supervisor) -> None:
    """The cached JSON is the run's history as ``Telemetry.history`` builds it from the store."""
    run_id = await run_slow_flow(supervisor, count=600, slow=200)
    async with open_dashboard(supervisor) as (app, client):
        data = (await client.get(f"/api/runs/{run_id}/history")).json()
        expected = await app.state.dashboard.telemetry.history(run_id)
        assert expected is not None
        assert data == json.loads(expected.to_json())
        assert (await client.get(f"/api/runs/{run_id}/history")).json() == data
