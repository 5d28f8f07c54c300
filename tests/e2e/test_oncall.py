"""On call, in real Chromium: processors of the dashboard's own ``--app``, viewers, re-runs.

One dashboard runs ``--app tests.apps.oncall`` (processors implemented in
its own process, run by a ``LocalExecutor``) with an operator token and a
viewer token, on the test session's Valkey.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.dashboard_process import DashboardProcess, dashboard_process

pytestmark = [pytest.mark.e2e]

OPERATOR = "oncall-operator-" + uuid.uuid4().hex[:8]
VIEWER = "oncall-viewer-" + uuid.uuid4().hex[:8]
#: Seconds a run launched here may take to reach its end state on a loaded machine.
RUN_DEADLINE_MS = 30_000


@pytest.fixture(scope="module")
def oncall(valkey_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardProcess]:
    log = tmp_path_factory.mktemp("oncall") / "dashboard.log"
    env = {"DATAGRAPH_REDIS_URL": valkey_url}
    args = (
        "--redis-url", valkey_url, "--token", OPERATOR, "--viewer-token", VIEWER, "--log-level", "warning",
    )
    with dashboard_process(*args, env=env, log=log) as dash:
        yield dash


def log_in(page: Page, base: str, token: str, then: str = "/operations") -> None:
    page.goto(f"{base}/login?next={then}")
    page.get_by_test_id("login-token").fill(token)
    page.get_by_test_id("login-submit").click()
    page.wait_for_url(f"{base}{then}")


def expect_state(page: Page, state: str) -> None:
    expect(page.get_by_test_id("run-state")).to_have_attribute("data-state", state, timeout=RUN_DEADLINE_MS)


def add(page: Page, processor: str) -> None:
    page.locator(f'[data-testid="designer-add"][data-processor="{processor}"]').click()


def test_app_processors_go_from_the_designer_to_a_succeeded_run(
    page: Page, oncall: DashboardProcess, console_errors: list[str], shoot: Callable[[Page, str], None]
) -> None:
    log_in(page, oncall.url, OPERATOR, "/designer")
    expect(page.get_by_test_id("signed-in-role")).to_have_text("operator")
    add(page, "oc_count")
    expect(page.get_by_test_id("designer-count")).to_have_text("1 processor")
    add(page, "oc_square")
    expect(page.get_by_test_id("designer-count")).to_have_text("2 processors")
    expect(page.get_by_test_id("designer-valid")).to_have_text("valid")
    shoot(page, "designer")
    page.get_by_test_id("designer-launch").click()
    expect(page.locator("#launch-title")).to_have_text("Launch flow")
    page.locator('[data-testid="launch-field"][data-io="oc_n"] input').fill("5")
    page.get_by_test_id("launch-submit").click()
    page.wait_for_url(f"{oncall.url}/runs/*")
    expect_state(page, "succeeded")
    expect(page.get_by_test_id("run-done")).to_have_text("2/2 processors done")
    shoot(page, "succeeded")
    assert console_errors == []


def test_an_operator_reruns_a_failed_run_and_lands_on_the_new_one(
    page: Page, oncall: DashboardProcess, console_errors: list[str], shoot: Callable[[Page, str], None]
) -> None:
    launched = httpx.post(
        f"{oncall.url}/api/runs", headers={"Authorization": f"Bearer {OPERATOR}"},
        json={"processors": ["oc_check"], "name": "oncall check", "inputs": {"oc_value": -3}},
    )
    assert launched.status_code == 201, launched.text
    origin = launched.json()["run_id"]
    log_in(page, oncall.url, OPERATOR, f"/runs/{origin}")
    expect_state(page, "failed")
    # The panel polls while the run runs, and offers "Run again" once it has ended.
    rerun = page.get_by_test_id("run-rerun-button")
    expect(rerun).to_be_visible(timeout=RUN_DEADLINE_MS)
    expect(page.get_by_test_id("run-rerun-edit")).to_be_visible()
    shoot(page, "failed")
    rerun.click()
    page.wait_for_url(f"{oncall.url}/runs/*")
    new_id = page.url.rsplit("/", 1)[1]
    assert new_id != origin
    expect(page.get_by_test_id("run-rerun-of")).to_contain_text(origin[:12])
    # Same flow, same inputs: it fails the same way.
    expect_state(page, "failed")
    expect(page.locator("h1")).to_have_text("oncall check")
    shoot(page, "rerun")
    # The origin lists it; "Edit and run again" opens the form filled with the old input.
    page.goto(f"{oncall.url}/runs/{origin}")
    expect(page.get_by_test_id("run-reruns")).to_contain_text(new_id[:12])
    page.get_by_test_id("run-rerun-edit").click()
    field = page.locator('[data-testid="launch-field"][data-io="oc_value"] input')
    expect(field).to_have_value("-3")
    shoot(page, "edit-and-run-again")
    field.fill("4")
    page.get_by_test_id("launch-submit").click()
    page.wait_for_url(f"{oncall.url}/runs/*")
    expect_state(page, "succeeded")
    expect(page.get_by_test_id("run-rerun-of")).to_contain_text(origin[:12])
    assert console_errors == []


def test_a_viewer_sees_no_controls_and_is_refused_when_it_posts(
    page: Page, oncall: DashboardProcess, console_errors: list[str], shoot: Callable[[Page, str], None]
) -> None:
    operator = {"Authorization": f"Bearer {OPERATOR}"}
    running = httpx.post(f"{oncall.url}/api/runs", headers=operator, json={
        "processors": ["oc_flood", "oc_trickle"], "name": "oncall watched", "inputs": {"oc_seconds": 120},
    }).json()["run_id"]
    finished = httpx.post(f"{oncall.url}/api/runs", headers=operator, json={
        "processors": ["oc_count"], "name": "oncall finished", "inputs": {"oc_n": 2},
    }).json()["run_id"]
    try:
        log_in(page, oncall.url, VIEWER, f"/runs/{running}")
        expect(page.get_by_test_id("signed-in-role")).to_have_text("viewer")
        expect(page.get_by_test_id("run-state")).to_have_attribute("data-state", "running")
        expect(page.get_by_test_id("run-graph").locator("svg")).to_be_visible()
        expect(page.get_by_test_id("run-cancel")).to_be_hidden()
        shoot(page, "viewer-run")

        page.goto(f"{oncall.url}/runs/{finished}")
        expect_state(page, "succeeded")
        expect(page.get_by_test_id("run-rerun")).to_be_visible()
        expect(page.get_by_test_id("run-rerun-button")).to_be_hidden()
        expect(page.get_by_test_id("run-rerun-edit")).to_be_hidden()

        page.goto(f"{oncall.url}/processors/oc_count")
        expect(page.get_by_test_id("processor-launch")).to_be_hidden()
        page.goto(f"{oncall.url}/designer?processor=oc_count")
        expect(page.get_by_test_id("designer-save")).to_be_hidden()
        expect(page.get_by_test_id("designer-launch")).to_be_hidden()
        shoot(page, "viewer-designer")

        # Posting anyway, from the viewer's own signed-in browser session, is refused.
        csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
        assert csrf
        cancel = page.request.post(f"{oncall.url}/runs/{running}/cancel", headers={"X-CSRF-Token": csrf})
        assert cancel.status == 403 and "viewer" in cancel.text()
        api = page.request.post(
            f"{oncall.url}/api/runs/{finished}/rerun", data="{}", headers={"Content-Type": "application/json"}
        )
        assert api.status == 403
        state = httpx.get(f"{oncall.url}/api/runs/{running}", headers=operator).json()["state"]
        assert state == "running"
        assert console_errors == []
    finally:
        httpx.post(f"{oncall.url}/api/runs/{running}/cancel", headers=operator, json={})
