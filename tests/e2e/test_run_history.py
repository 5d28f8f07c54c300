"""The run view's history: the heatmap grows live, switches to throughput, names the bottleneck."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import Page, expect

if TYPE_CHECKING:
    from .conftest import DemoProcess

pytestmark = [pytest.mark.e2e, pytest.mark.celery]


def _samples(page: Page) -> int:
    return int(page.get_by_test_id("heatmap").get_attribute("data-samples") or 0)


def test_heatmap_of_the_live_run_grows_and_switches(
    page: Page,
    dashboard: str,
    demo_stack: DemoProcess,
    console_errors: list[str],
    shoot: Callable[[Page, str], None],
) -> None:
    page.goto(f"{dashboard}/runs/{demo_stack.live_run_id}")
    heatmap = page.get_by_test_id("heatmap")
    expect(heatmap).to_be_visible(timeout=15_000)
    fill = heatmap.locator(".heatmap-fill svg")
    throughput = heatmap.locator(".heatmap-throughput svg")
    expect(fill).to_be_visible()
    expect(throughput).to_be_hidden()

    # One row per edge of orders-etl, labelled, with the figures of each cell on hover.
    expect(fill.locator("g.edge-row")).to_have_count(9)
    expect(fill.locator("g.band-row")).to_have_count(7)
    events = 'g.edge-row[data-label="events: merge_events \u2192 enrich_events"]'
    expect(fill.locator(events)).to_have_count(1)
    first_title = fill.locator("g.edge-row rect title").first
    expect(first_title).to_contain_text("queued")

    # It grows over SSE, without a reload.
    page.evaluate("window.__marker = 1")
    before = _samples(page)
    page.wait_for_function(
        f"() => Number(document.querySelector('[data-testid=heatmap]').dataset.samples) > {before}",
        timeout=15_000,
    )
    assert page.evaluate("window.__marker") == 1, "the page reloaded"

    page.locator("#heatmap-by-throughput").check()
    expect(throughput).to_be_visible()
    expect(fill).to_be_hidden()
    # The choice survives the next live update.
    now = _samples(page)
    page.wait_for_function(
        f"() => Number(document.querySelector('[data-testid=heatmap]').dataset.samples) > {now}",
        timeout=15_000,
    )
    expect(page.locator(".heatmap-throughput svg")).to_be_visible()
    expect(page.get_by_test_id("bottleneck")).to_be_visible()
    expect(page.get_by_test_id("edge-trend").first.locator("svg")).to_have_count(2)
    shoot(page, "history")
    assert console_errors == []
