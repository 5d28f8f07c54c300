"""The on-call view: workers, runs and the hottest edges, live over SSE, in real Chromium."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import Page, expect

if TYPE_CHECKING:
    from .conftest import DemoProcess

pytestmark = [pytest.mark.e2e, pytest.mark.celery]


def test_operations_shows_the_demo_worker_online_and_the_live_run(
    page: Page,
    dashboard: str,
    demo_stack: DemoProcess,
    console_errors: list[str],
    shoot: Callable[[Page, str], None],
) -> None:
    page.goto(dashboard + "/operations")

    worker = page.get_by_test_id("worker-row").filter(has_text="enrich_events")
    expect(worker).to_have_count(1)
    expect(worker).to_have_attribute("data-online", "true")
    expect(worker).to_contain_text("online")
    expect(worker).to_contain_text("celery")
    expect(worker).to_contain_text(f":{demo_stack.worker_pid}:")

    # The continuous demo run is listed as running, and its edges rank among the hottest.
    run_id = demo_stack.live_run_id
    run_row = page.locator(f'#ops-runs [data-testid="run-row"][data-run-id="{run_id}"]')
    expect(run_row).to_have_attribute("data-state", "running")
    hot = page.locator(f'[data-testid="hot-edge"][data-run-id="{run_id}"]')
    expect(hot.first).to_be_visible(timeout=15_000)
    shoot(page, "operations")

    # Live: the "live" clock is refreshed over SSE without reloading the page.
    status = page.get_by_test_id("live-status")
    first = status.text_content() or ""
    expect(status).not_to_have_text(first, timeout=10_000)
    assert console_errors == []


def test_runs_page_filters_by_state(page: Page, dashboard: str, demo_stack: DemoProcess) -> None:
    page.goto(dashboard + "/runs?state=running")
    run_id = demo_stack.live_run_id
    expect(page.locator(f'[data-testid="run-row"][data-run-id="{run_id}"]')).to_be_visible()
    rows = page.get_by_test_id("run-row")
    for i in range(rows.count()):
        expect(rows.nth(i)).to_have_attribute("data-state", "running")

    page.locator(f'[data-testid="run-row"][data-run-id="{run_id}"] [data-testid="run-link"]').click()
    expect(page).to_have_url(f"{dashboard}/runs/{run_id}")
    expect(page.get_by_test_id("run-state")).to_have_text("running")
    expect(page.locator("h1")).to_have_text("orders-etl")
