"""Browsing the processors the demo worker registered, in real Chromium."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from playwright.sync_api import Locator, Page, expect

pytestmark = [pytest.mark.e2e, pytest.mark.celery]

DEMO_PROCESSORS = [
    "check_numbers",
    "daily_report",
    "enrich_events",
    "extract_clicks",
    "extract_orders",
    "generate_numbers",
    "load_warehouse",
    "merge_events",
    "parse_orders",
]


def row(page: Page, name: str) -> Locator:
    return page.locator(f'[data-testid="processor-row"][data-processor="{name}"]')


def test_processors_lists_demo_processors_with_types_and_workers(
    page: Page, dashboard: str, console_errors: list[str], shoot: Callable[[Page, str], None]
) -> None:
    page.goto(dashboard + "/processors")

    rows = page.get_by_test_id("processor-row")
    expect(rows).to_have_count(len(DEMO_PROCESSORS))
    names = [rows.nth(i).get_attribute("data-processor") or "" for i in range(rows.count())]
    assert sorted(names) == DEMO_PROCESSORS
    shoot(page, "list")

    # Types come from the annotations, as the worker published them.
    expect(row(page, "extract_orders")).to_contain_text("feed: OrderFeed")
    expect(row(page, "extract_orders")).to_contain_text("raw_orders: str")
    expect(row(page, "check_numbers")).to_contain_text("fail: bool")
    expect(row(page, "merge_events")).to_contain_text("clicks: dict[str, Any]")
    # The docstring (or description) and the wait flag.
    expect(row(page, "enrich_events")).to_contain_text("the slow stage")
    expect(row(page, "daily_report").locator("td").nth(3)).to_have_text("yes")
    expect(row(page, "parse_orders").locator("td").nth(3)).to_have_text("no")
    # The Celery worker is online for every one of them.
    for name in DEMO_PROCESSORS:
        expect(row(page, name).get_by_test_id("processor-online")).to_have_text("online")
    assert console_errors == []


def test_filter_narrows_the_list_as_you_type(
    page: Page, dashboard: str, console_errors: list[str], shoot: Callable[[Page, str], None]
) -> None:
    page.goto(dashboard + "/processors")
    rows = page.get_by_test_id("processor-row")
    expect(rows).to_have_count(len(DEMO_PROCESSORS))

    page.get_by_test_id("processor-filter").press_sequentially("enrich_e", delay=30)
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-processor", "enrich_events")
    expect(page).to_have_url(re.compile(r"/processors\?q=enrich_e$"))
    shoot(page, "filtered")

    # A type matches too: both sources read an OrderFeed.
    page.get_by_test_id("processor-filter").fill("OrderFeed")
    expect(rows).to_have_count(2)
    expect(row(page, "extract_orders")).to_be_visible()
    expect(row(page, "extract_clicks")).to_be_visible()

    page.get_by_test_id("processor-filter").fill("no-such-processor")
    expect(page.get_by_test_id("processor-empty")).to_contain_text("No processor matches")

    page.get_by_test_id("processor-filter").fill("")
    expect(rows).to_have_count(len(DEMO_PROCESSORS))
    assert console_errors == []


def test_processor_detail_shows_docstring_and_schema(
    page: Page, dashboard: str, console_errors: list[str], shoot: Callable[[Page, str], None]
) -> None:
    page.goto(dashboard + "/processors")
    row(page, "extract_orders").get_by_test_id("processor-link").click()

    expect(page).to_have_url(dashboard + "/processors/extract_orders")
    expect(page.locator("#processor-name")).to_have_text("extract_orders")
    expect(page.get_by_test_id("processor-doc")).to_contain_text("order_id,customer,country,amount_cents")
    feed = page.locator('#processor-inputs tr[data-port="feed"]')
    expect(feed.locator(".type")).to_have_text("OrderFeed")
    feed.locator("summary").click()
    expect(feed.locator("pre")).to_contain_text('"rate"')
    shoot(page, "detail")
    assert console_errors == []
