"""``datagraph dashboard --app MODULE``: processors implemented in the dashboard's own process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.dashboard_process import ROOT, dashboard_process, wait_for

APP_PROCESSORS = {"oc_check", "oc_count", "oc_flood", "oc_square", "oc_trickle"}


@pytest.mark.timeout(90)
def test_processors_of_the_app_module_are_registered_and_launchable(valkey_url: str, tmp_path: Path) -> None:
    env = {"DATAGRAPH_REDIS_URL": valkey_url}
    with dashboard_process("--redis-url", valkey_url, env=env, log=tmp_path / "dashboard.log") as dash:
        # Registered from startup, before anything was launched.
        names = {p["name"] for p in httpx.get(f"{dash.url}/api/processors").json()}
        assert names >= APP_PROCESSORS
        workers = httpx.get(f"{dash.url}/api/workers").json()
        # The dashboard's own process is a worker implementing them (other dashboards of this
        # test session may be listed too, stopped).
        mine = [w for w in workers if w["pid"] == dash.process.pid]
        assert len(mine) == 1 and mine[0]["online"], workers
        assert set(mine[0]["processors"]) >= APP_PROCESSORS

        launched = httpx.post(
            f"{dash.url}/api/runs", json={"processors": ["oc_count", "oc_square"], "inputs": {"oc_n": 4}}
        )
        assert launched.status_code == 201, launched.text
        run_url = f"{dash.url}/api{launched.json()['url']}"

        def succeeded() -> bool:
            return bool(httpx.get(run_url).json()["state"] == "succeeded")

        wait_for(succeeded, 20, "the run launched through the app's LocalExecutor succeeding")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--viewer-token", "v"], "a viewer token needs an operator token"),
        (["--token", "t", "--viewer-token", "t"], "must differ from the operator token"),
        (["--notify-url", "mailto:oncall@example.com"], "is not an http(s) URL"),
    ],
)
def test_bad_on_call_options_are_refused_naming_the_option(
    valkey_url: str, args: list[str], message: str
) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "datagraph", "dashboard", "--redis-url", valkey_url, *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )
    assert completed.returncode == 2, completed.stderr
    assert message in completed.stderr
