"""Launching flows from the typed form and watching their runs live, in real Chromium.

Runs go through the demo stack's supervisor and CeleryExecutor to the real
demo worker; the run view is updated over SSE, never reloaded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
from playwright.sync_api import Locator, Page, expect

pytestmark = [pytest.mark.e2e, pytest.mark.celery]

RUN_URL = re.compile(r"/runs/[0-9a-f]{32}$")
#: Milliseconds a run of the demo may take to end on a busy 2-core machine.
RUN_DEADLINE_MS = 60_000


def field(page: Page, io: str) -> Locator:
    return page.locator(f'[data-testid="launch-field"][data-io="{io}"]')


def field_error(page: Page, io: str) -> Locator:
    return page.locator(f'[data-testid="field-error"][data-io="{io}"]')


def preview(page: Page, io: str) -> Locator:
    return page.locator(f'[data-testid="preview"][data-io="{io}"]')


def test_bad_input_gets_a_message_per_field_then_good_input_runs(
    page: Page, dashboard: str, console_errors: list[str], shoot: Callable[[Page, str], None]
) -> None:
    page.goto(dashboard + "/launch?flow=numbers-check")
    expect(page.locator("#launch-title")).to_have_text("Launch numbers-check")

    field(page, "n").locator("input").fill("many")
    page.get_by_test_id("launch-submit").click()
    expect(field_error(page, "n")).not_to_be_empty()
    expect(field(page, "n").locator("input")).to_have_attribute("aria-invalid", "true")
    expect(field_error(page, "fail")).to_be_empty()
    expect(page).to_have_url(re.compile(r"/launch\?flow=numbers-check$"))
    shoot(page, "field-error")

    # What was typed is kept, so it can be corrected.
    expect(field(page, "n").locator("input")).to_have_value("many")
    field(page, "n").locator("input").fill("300")
    page.get_by_test_id("launch-submit").click()

    expect(page).to_have_url(RUN_URL)
    expect(page.locator("h1")).to_have_text("numbers-check")
    expect(page.get_by_test_id("run-state")).to_have_text("succeeded", timeout=RUN_DEADLINE_MS)
    expect(page.get_by_test_id("run-done")).to_have_text("2/2 processors done")
    expect(preview(page, "checked")).to_contain_text("299")
    expect(page.get_by_test_id("run-error")).to_have_count(0)
    shoot(page, "succeeded")
    assert console_errors == []


def test_run_view_edge_labels_change_live_until_the_run_succeeds(
    page: Page, dashboard: str, console_errors: list[str], shoot: Callable[[Page, str], None]
) -> None:
    page.goto(dashboard + "/launch?flow=orders-etl")
    feed = field(page, "feed").locator("textarea").first
    expect(field(page, "feed")).to_have_attribute("data-widget", re.compile("json|model|object"))

    # A value the OrderFeed model refuses is reported on its field, not as a 500.
    feed.fill(json.dumps({"orders": 10, "rate": 0}))
    page.get_by_test_id("launch-submit").click()
    expect(field_error(page, "feed")).to_contain_text("rate")
    feed.fill("{not json")
    page.get_by_test_id("launch-submit").click()
    # Wait for this submission's own message: the previous one is still on screen, and
    # filling the field before the re-rendered form arrives would lose the new value.
    expect(field_error(page, "feed")).to_contain_text("not valid JSON")

    # Five seconds of streaming: 2,500 orders and as many clicks at 500 a second.
    feed.fill(json.dumps({"orders": 2500, "rate": 500}))
    page.get_by_test_id("launch-submit").click()
    expect(page).to_have_url(RUN_URL)
    run_url = page.url

    graph = page.get_by_test_id("run-graph")
    label = graph.locator("#edge-raw_orders-parse_orders")
    expect(label).to_contain_text("raw_orders")
    expect(label).to_contain_text("queued", timeout=RUN_DEADLINE_MS)
    first = label.text_content() or ""
    # The overlay is pushed over SSE: the same element shows new figures.
    expect(label).not_to_have_text(first, timeout=10_000)
    # Each edge carries a fill class, and each node a state class, for the colours.
    assert re.search(r"heat-\d", graph.locator("#edge-events-enrich_events").get_attribute("class") or "")
    assert "state-" in (graph.locator("#node-enrich_events").get_attribute("class") or "")
    shoot(page, "live")

    expect(page.get_by_test_id("run-state")).to_have_text("succeeded", timeout=RUN_DEADLINE_MS)
    expect(page.get_by_test_id("run-done")).to_have_text("7/7 processors done")
    written = page.locator('[data-testid="edge-row"][data-io="raw_orders"] [data-testid="edge-written"]')
    expect(written).to_have_text("2500")
    expect(preview(page, "report")).to_contain_text("'orders': 2500")
    assert page.url == run_url  # never reloaded
    shoot(page, "succeeded")
    assert console_errors == []


def test_failing_processor_shows_its_traceback(
    page: Page, dashboard: str, console_errors: list[str], shoot: Callable[[Page, str], None]
) -> None:
    # Launched on its own, from the processor's page: both inputs come from the form.
    page.goto(dashboard + "/processors/check_numbers")
    page.get_by_test_id("processor-launch").click()
    expect(page.get_by_test_id("launch-field")).to_have_count(2)
    numbers = field(page, "numbers")
    numbers.locator("summary").click()
    numbers.locator("details textarea").fill(json.dumps(list(range(20))))
    field(page, "fail").locator('input[type="checkbox"]').check()
    page.get_by_test_id("launch-submit").click()

    expect(page).to_have_url(RUN_URL)
    expect(page.get_by_test_id("run-state")).to_have_text("failed", timeout=RUN_DEADLINE_MS)
    expect(page.get_by_test_id("run-error")).to_contain_text("check_numbers")
    expect(page.get_by_test_id("run-error-message")).to_have_text(
        "DemoFailure: check_numbers was told to fail (fail=true) and stopped at number 10"
    )
    traceback = page.get_by_test_id("run-traceback")
    expect(traceback).to_contain_text("Traceback (most recent call last)")
    expect(traceback).to_contain_text("datagraph/demo/processors.py")
    expect(traceback).to_contain_text("raise DemoFailure(")
    shoot(page, "failed")
    assert console_errors == []


def test_cancel_button_stops_a_running_run(
    page: Page, dashboard: str, console_errors: list[str]
) -> None:
    page.goto(dashboard + "/launch?flow=orders-etl")
    field(page, "feed").locator("textarea").first.fill(json.dumps({"orders": 0, "rate": 100, "seconds": 120}))
    page.get_by_test_id("launch-submit").click()
    expect(page).to_have_url(RUN_URL)
    expect(page.get_by_test_id("run-state")).to_have_text("running")

    page.get_by_test_id("run-cancel").click()
    expect(page.get_by_test_id("run-state")).to_have_text("cancelled", timeout=15_000)
    expect(page.get_by_test_id("run-cancelled")).to_be_visible()
    assert console_errors == []
