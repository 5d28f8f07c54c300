"""Assembling, checking and saving a flow in the designer, in real Chromium."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.e2e, pytest.mark.celery]


def add(page: Page, processor: str) -> None:
    page.locator(f'[data-testid="designer-add"][data-processor="{processor}"]').click()


def test_designer_redraws_validates_and_saves_a_flow(
    page: Page, dashboard: str, console_errors: list[str], shoot: Callable[[Page, str], None]
) -> None:
    page.goto(dashboard + "/designer")
    graph = page.get_by_test_id("designer-graph")
    expect(graph.locator("svg")).to_have_count(0)
    # The demo saved its flows for the designer.
    expect(page.locator('[data-testid="saved-flow"][data-flow="orders-etl"]')).to_be_visible()
    expect(page.locator('[data-testid="saved-flow"][data-flow="numbers-check"]')).to_be_visible()

    add(page, "check_numbers")
    expect(page.get_by_test_id("designer-count")).to_have_text("1 processor")
    expect(graph.locator("svg #node-check_numbers")).to_be_visible()
    # Both inputs are still missing: nothing here produces them.
    needed = page.get_by_test_id("designer-messages")
    expect(needed).to_contain_text("inputs still needed")
    expect(needed).to_contain_text("'numbers', 'fail'")
    shoot(page, "one-processor")

    add(page, "generate_numbers")
    expect(page.get_by_test_id("designer-count")).to_have_text("2 processors")
    expect(graph.locator("svg #node-generate_numbers")).to_be_visible()
    expect(graph.locator("svg #edge-numbers-check_numbers")).to_be_visible()
    expect(needed).to_contain_text("'fail', 'n'")
    expect(needed).not_to_contain_text("'numbers'")
    expect(page.get_by_test_id("designer-valid")).to_have_text("valid")

    # Removing a processor redraws too.
    page.locator('[data-testid="designer-remove"][data-processor="generate_numbers"]').click()
    expect(page.get_by_test_id("designer-count")).to_have_text("1 processor")
    expect(graph.locator("svg #node-generate_numbers")).to_have_count(0)
    add(page, "generate_numbers")
    expect(page.get_by_test_id("designer-count")).to_have_text("2 processors")

    name = f"e2e-numbers-{uuid.uuid4().hex[:6]}"
    page.get_by_test_id("flow-name").fill(name)
    page.get_by_test_id("designer-save").click()
    expect(page.get_by_test_id("designer-saved")).to_have_text(f"Saved as “{name}”.")
    saved = page.locator(f'[data-testid="saved-flow"][data-flow="{name}"]')
    expect(saved).to_contain_text("2 processors")
    shoot(page, "saved")

    # The saved flow loads back, and launches from a form made of its inputs.
    page.goto(dashboard + "/designer")
    page.locator(f'[data-testid="saved-flow"][data-flow="{name}"] [data-testid="flow-load"]').click()
    expect(page.get_by_test_id("designer-count")).to_have_text("2 processors")
    expect(page.get_by_test_id("flow-name")).to_have_value(name)
    page.get_by_test_id("designer-launch").click()
    expect(page.locator("#launch-title")).to_have_text(f"Launch {name}")
    fields = page.get_by_test_id("launch-field")
    expect(fields).to_have_count(2)
    expect(page.locator('[data-testid="launch-field"][data-io="n"]')).to_have_attribute("data-widget", "int")
    expect(page.locator('[data-testid="launch-field"][data-io="fail"]')).to_have_attribute(
        "data-widget", "bool"
    )
    shoot(page, "launch-form")
    assert console_errors == []


def test_designer_opened_from_a_url_tracks_missing_inputs(
    page: Page, dashboard: str, console_errors: list[str]
) -> None:
    page.goto(dashboard + "/designer?processor=extract_orders&processor=parse_orders")
    expect(page.get_by_test_id("designer-count")).to_have_text("2 processors")
    expect(page.get_by_test_id("designer-valid")).to_be_visible()

    # merge_events reads clicks, which nothing here produces yet; with
    # extract_clicks added the flow is whole again.
    add(page, "merge_events")
    expect(page.get_by_test_id("designer-messages")).to_contain_text("'clicks'")
    add(page, "extract_clicks")
    expect(page.get_by_test_id("designer-messages")).not_to_contain_text("'clicks'")
    expect(page.get_by_test_id("designer-messages")).to_contain_text("'feed'")
    assert console_errors == []
