"""The shipped Prometheus alert rules: promtool checks them, and a real Prometheus fires one.

``docs/prometheus/datagraph-alerts.yml`` is what operators load;
``tests/prometheus/datagraph-alerts.test.yml`` holds a firing and a quiet
unit case per rule. The end-to-end test scrapes a real dashboard (``--app
tests.apps.oncall``) with Debian's Prometheus while a flow backs up, and asks
Prometheus's own API whether the backpressure alert fires.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.dashboard_process import dashboard_process, free_port, wait_for
from tests.debian import prometheus, promtool

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "docs" / "prometheus" / "datagraph-alerts.yml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "datagraph-alerts.test.yml"
ALERTS = {
    "DatagraphRunFailed", "DatagraphRunStuck", "DatagraphEdgeBackpressured", "DatagraphWorkerOffline",
    "DatagraphProcessorWithoutWorker", "DatagraphStoreUnreachable",
}


def test_the_rules_file_is_valid_and_covers_every_alert() -> None:
    checked = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True,
                             timeout=30, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in checked.stdout
    text = RULES.read_text()
    assert set(re.findall(r"- alert: (\w+)", text)) == ALERTS
    # Every rule tells on-call what happened, what to do, and where to look.
    assert text.count("summary:") == text.count("description:") == text.count("dashboard: \"http://") == 6


def test_every_rule_has_unit_cases_that_pass() -> None:
    cases = RULE_TESTS.read_text()
    for alert in ALERTS:
        assert cases.count(f"alertname: {alert}") >= 2, f"{alert} needs a firing and a quiet case"
    tested = subprocess.run([promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


@pytest.mark.timeout(180)
def test_prometheus_fires_the_backpressure_alert_for_a_backed_up_flow(
    valkey_url: str, tmp_path: Path
) -> None:
    # The shipped rules, with the backpressure rule's 5 minutes shortened to 3 seconds.
    rules = RULES.read_text()
    shortened = re.sub(r"(expr: datagraph_edge_fill_ratio > 0\.85\n\s+for: )5m", r"\g<1>3s", rules)
    assert shortened != rules
    (tmp_path / "rules.yml").write_text(shortened)
    env = {"DATAGRAPH_REDIS_URL": valkey_url}
    with dashboard_process("--redis-url", valkey_url, env=env, log=tmp_path / "dashboard.log") as dash:
        launched = httpx.post(f"{dash.url}/api/runs", json={
            "processors": ["oc_flood", "oc_trickle"], "name": "oncall flood", "inputs": {"oc_seconds": 90},
        })
        assert launched.status_code == 201, launched.text
        run_id = launched.json()["run_id"]
        target = dash.url.removeprefix("http://")
        (tmp_path / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "rule_files: [rules.yml]\n"
            f"scrape_configs:\n  - job_name: datagraph\n    static_configs:\n      - targets: ['{target}']\n"
        )
        port = free_port()
        with (tmp_path / "prometheus.log").open("w") as sink:
            server = subprocess.Popen(
                [prometheus(), f"--config.file={tmp_path / 'prometheus.yml'}",
                 f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path,
            )
        api = f"http://127.0.0.1:{port}/api/v1"
        firing: list[dict[str, object]] = []
        try:
            def alert_fires() -> bool:
                assert server.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
                try:
                    response = httpx.get(f"{api}/alerts", timeout=2)
                except httpx.TransportError:
                    return False
                if response.status_code != 200:  # still starting ("Service Unavailable")
                    return False
                alerts = response.json()["data"]["alerts"]
                firing[:] = [
                    a for a in alerts
                    if a["labels"]["alertname"] == "DatagraphEdgeBackpressured" and a["state"] == "firing"
                ]
                return bool(firing)

            wait_for(alert_fires, 90, "Prometheus reporting DatagraphEdgeBackpressured firing", interval=0.5)
            # The scrape itself was healthy, and the metric behind the alert is the edge's own.
            targets = httpx.get(f"{api}/targets", timeout=5).json()["data"]["activeTargets"]
            assert [t["health"] for t in targets] == ["up"], targets
        finally:
            server.terminate()
            server.wait(15)
            httpx.post(f"{dash.url}/api/runs/{run_id}/cancel", json={})
    labels = firing[0]["labels"]
    assert isinstance(labels, dict)
    assert (labels["flow"], labels["io"], labels["source"], labels["target"]) == (
        "oncall flood", "oc_flooded", "oc_flood", "oc_trickle"
    )
    annotations = firing[0]["annotations"]
    assert isinstance(annotations, dict)
    assert annotations["dashboard"] == f"{dash.url}/operations"
    assert "oc_trickle" in str(annotations["description"])
