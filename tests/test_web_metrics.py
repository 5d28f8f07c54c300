"""``/metrics``: Prometheus names and units, no per-run series, and the store's health."""

from __future__ import annotations

import re
import subprocess

import anyio.to_thread
import pytest

from datagraph import Flow, IOVal, Supervisor
from tests.debian import promtool
from tests.web_support import open_dashboard, web_slow

pytestmark = pytest.mark.anyio



def sample(text: str, name: str, labels: str = "") -> float | None:
    """The value of one series in an exposition, or None when it is absent."""
    pattern = rf"^{re.escape(name)}{re.escape('{' + labels + '}') if labels else ''} (\S+)$"
    match = re.search(pattern, text, re.M)
    return float(match[1]) if match else None


async def test_metrics_aggregate_edges_over_runs_and_pass_promtool(supervisor: Supervisor) -> None:
    flow = Flow.from_processors(web_slow, name='web "metrics"').resolve()
    run_ids = []
    for _ in range(2):
        outputs = await supervisor.start_flow(flow, inputs=[IOVal(name="web_slow_n", value=100_000)])
        run_ids.append(outputs["web_slow_out"].run_id)
    try:
        async with open_dashboard(supervisor) as (_, client):
            response = await client.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
            text = response.text
            for run_id in run_ids:
                assert run_id not in text
            assert 'run="' not in text
            for family, kind in [
                ("datagraph_runs", "gauge"), ("datagraph_workers", "gauge"),
                ("datagraph_store_up", "gauge"), ("datagraph_processor_online", "gauge"),
                ("datagraph_edge_backlog_values", "gauge"),
                ("datagraph_edge_throughput_values_per_second", "gauge"),
                ("datagraph_edge_fill_ratio", "gauge"),
                ("datagraph_dashboard_failed_logins_total", "counter"),
            ]:
                assert f"# TYPE {family} {kind}" in text, family
            assert sample(text, "datagraph_store_up") == 1
            assert (sample(text, "datagraph_runs", 'state="running"') or 0) >= 2
            assert sample(text, "datagraph_processor_online", 'processor="web_slow"') == 1
            assert (sample(text, "datagraph_workers", 'status="online"') or 0) >= 1
            labels = 'flow="web \\"metrics\\"",io="web_slow_out",source="web_slow",target="(output)"'
            # One series for the two runs: the backlogs summed, the fill the fuller one's.
            series = re.findall(rf"^datagraph_edge_backlog_values\{{{re.escape(labels)}\}}", text, re.M)
            assert len(series) == 1
            backlog = sample(text, "datagraph_edge_backlog_values", labels)
            assert backlog is not None and backlog >= 0
            api = [(await client.get(f"/api/runs/{run_id}")).json() for run_id in run_ids]
            assert all(any(e["io"] == "web_slow_out" for e in run["edges"]) for run in api)

            checked = await anyio.to_thread.run_sync(lambda: subprocess.run(
                [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30,
                check=False,
            ))
            assert checked.returncode == 0, checked.stdout + checked.stderr
            assert checked.stdout.strip() == "" and checked.stderr.strip() == "", checked.stderr
    finally:
        for run_id in run_ids:
            await supervisor.cancel(run_id)


async def test_metrics_report_a_store_that_does_not_answer(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor) as (app, client):
        dashboard = app.state.dashboard
        await dashboard.telemetry.client.close()  # the store "goes away" for this connection
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert sample(response.text, "datagraph_store_up") == 0
        assert "datagraph_runs{" not in response.text
