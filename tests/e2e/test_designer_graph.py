"""Acting on the designer's graph in real Chromium: select, remove, add from an IO node,
typed edges, undo with Back, a shared address, and graph text readable at two widths."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from .conftest import DemoProcess

pytestmark = [pytest.mark.e2e, pytest.mark.celery]

REPO = Path(__file__).resolve().parents[2]
#: Seconds the typed service may take to publish its registrations, and to stop.
SERVICE_DEADLINE = 30.0
#: Smallest height (CSS pixels) of a line of graph text: readable on call.
MIN_TEXT_PX = 11.0


@pytest.fixture(scope="module")
def typed_service(demo_stack: DemoProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``tests/e2e/typed_service.py`` on the demo's store: ``audit_orders`` reads ``orders`` as int."""
    match = re.search(r"store\s+(redis://\S+)", demo_stack.output.read_text(errors="replace"))
    assert match, "the demo's banner names no store"
    output = tmp_path_factory.mktemp("typed") / "service.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.typed_service", match[1]],
            cwd=REPO, stdin=subprocess.PIPE, stdout=sink, stderr=subprocess.STDOUT,
        )
    assert process.stdin is not None
    try:
        deadline = time.monotonic() + SERVICE_DEADLINE
        while "ready" not in output.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"the typed service did not start within {SERVICE_DEADLINE:.0f}s:\n"
                    + output.read_text(errors="replace"),
                    pytrace=False,
                )
            time.sleep(0.1)
        yield
    finally:
        process.stdin.close()  # the service's signal to stop
        try:
            process.wait(SERVICE_DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
            pytest.fail("the typed service did not stop when its stdin closed", pytrace=False)


def count(page: Page) -> Locator:
    return page.get_by_test_id("designer-count")


def test_select_remove_and_keys_on_the_graph(
    page: Page, dashboard: str, console_errors: list[str], shoot: Callable[[Page, str], None]
) -> None:
    page.goto(dashboard + "/designer?processor=extract_orders&processor=parse_orders&processor=merge_events")
    expect(count(page)).to_have_text("3 processors")
    inspector = page.get_by_test_id("designer-inspector")
    expect(inspector.get_by_test_id("inspector-hint")).to_be_visible()

    # Click a node: the inspector shows its ports and types, and the address says so.
    page.locator('#designer-graph [id="node-parse_orders"] a').click()
    expect(inspector.get_by_test_id("inspector-title")).to_have_text("parse_orders")
    expect(inspector.locator('tr[data-port="raw_orders"]')).to_contain_text("str")
    expect(inspector.locator('tr[data-port="orders"]')).to_contain_text("dict[str, Any]")
    expect(inspector.get_by_test_id("inspector-workers")).to_contain_text("online")
    expect(page).to_have_url(re.compile(r"select=parse_orders"))
    selected = page.locator('#designer-graph [id="node-parse_orders"]')
    expect(selected).to_have_class(re.compile(r"\bselected\b"))
    shoot(page, "selected")

    # Remove it from the inspector.
    inspector.get_by_test_id("inspector-remove").click()
    expect(count(page)).to_have_text("2 processors")
    expect(page.locator('#designer-graph [id="node-parse_orders"]')).to_have_count(0)
    expect(page).not_to_have_url(re.compile(r"parse_orders"))

    # The keyboard does the same: Tab reaches the nodes, Enter selects, Delete removes.
    page.locator('[data-testid="designer-remove"][data-processor="merge_events"]').focus()
    focused_node = """() => {
        const node = document.activeElement && document.activeElement.closest('#designer-graph g.node');
        return node ? node.id : null;
    }"""
    reached = []
    for _ in range(6):
        page.keyboard.press("Tab")
        reached.append(page.evaluate(focused_node))
        if reached[-1] == "node-merge_events":
            break
    assert reached[0] is not None, "Tab from the selection does not reach the graph"
    assert reached[-1] == "node-merge_events", reached
    page.keyboard.press("Enter")
    expect(inspector.get_by_test_id("inspector-title")).to_have_text("merge_events")
    expect(page.locator('#designer-graph [id="node-merge_events"] a')).to_be_focused()
    page.keyboard.press("Delete")
    expect(count(page)).to_have_text("1 processor")
    expect(page.locator('#designer-graph [id="node-merge_events"]')).to_have_count(0)

    # Back undoes the last change, Forward (Ctrl-Shift-Z) redoes it, Ctrl-Z undoes it again.
    page.go_back()
    expect(count(page)).to_have_text("2 processors")
    expect(page.locator('#designer-graph [id="node-merge_events"]')).to_be_visible()
    page.locator("body").click(position={"x": 5, "y": 200})
    page.keyboard.press("Control+Shift+Z")
    expect(count(page)).to_have_text("1 processor")
    page.keyboard.press("Control+Z")
    expect(count(page)).to_have_text("2 processors")
    page.go_back()
    expect(count(page)).to_have_text("3 processors")
    expect(page.locator('#designer-graph [id="node-parse_orders"]')).to_be_visible()
    assert console_errors == []


def test_add_a_suggested_producer_from_an_input_node(
    page: Page, dashboard: str, console_errors: list[str], shoot: Callable[[Page, str], None]
) -> None:
    page.goto(dashboard + "/designer?processor=parse_orders")
    suggestion = page.locator('[data-testid="designer-suggestion"][data-io="raw_orders"]')
    expect(suggestion).to_contain_text("add extract_orders to produce 'raw_orders'")

    page.locator('#designer-graph [id="input-raw_orders"] a').click()
    inspector = page.get_by_test_id("designer-inspector")
    expect(inspector.get_by_test_id("inspector-title")).to_have_text("IO raw_orders")
    producers = inspector.get_by_test_id("inspector-producers")
    expect(producers).to_contain_text("extract_orders")
    expect(inspector.get_by_test_id("inspector-readers")).to_contain_text("in this flow")
    shoot(page, "io-selected")
    producers.locator('[data-testid="inspector-add"][data-processor="extract_orders"]').click()
    expect(count(page)).to_have_text("2 processors")
    expect(page.locator('#designer-graph [id="edge-raw_orders-parse_orders"]')).to_contain_text("str")
    expect(page.locator('#designer-graph [id="input-raw_orders"]')).to_have_count(0)
    expect(page.locator('[data-testid="designer-suggestion"][data-io="raw_orders"]')).to_have_count(0)

    # One click on a suggestion adds its processor too.
    page.locator('[data-testid="designer-suggest-add"][data-processor="merge_events"]').click()
    expect(count(page)).to_have_text("3 processors")
    page.go_back()
    expect(count(page)).to_have_text("2 processors")
    assert console_errors == []


def test_a_mismatched_edge_is_flagged_and_a_shared_address_restores_the_design(
    page: Page,
    browser: Browser,
    dashboard: str,
    typed_service: None,
    console_errors: list[str],
    shoot: Callable[[Page, str], None],
) -> None:
    page.goto(dashboard + "/designer?processor=extract_orders&processor=parse_orders")
    expect(count(page)).to_have_text("2 processors")
    page.locator('[data-testid="designer-add"][data-processor="audit_orders"]').click()
    expect(count(page)).to_have_text("3 processors")
    edge = page.locator('#designer-graph [id="edge-orders-audit_orders"]')
    expect(edge).to_have_class(re.compile(r"\bmismatch\b"))
    expect(edge).to_contain_text("dict[str, Any] ≠ int")
    warning = page.locator('[data-testid="designer-warning"]', has_text="type mismatch")
    expect(warning).to_contain_text(
        "'parse_orders' produces dict[str, Any], but 'audit_orders' reads it as int"
    )
    # A warning, not an error: the flow still launches.
    expect(page.get_by_test_id("designer-valid")).to_be_visible()
    expect(page.get_by_test_id("designer-launch")).to_have_attribute("href", re.compile(r"^/launch\?"))
    page.locator('#designer-graph [id="node-audit_orders"] a').click()
    expect(page.get_by_test_id("inspector-title")).to_have_text("audit_orders")
    shoot(page, "mismatch")

    # The address is the design: a colleague opening it sees the same.
    shared = page.url
    assert "processor=audit_orders" in shared and "select=audit_orders" in shared
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        other = context.new_page()
        errors: list[str] = []
        other.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        other.goto(shared)
        expect(other.get_by_test_id("designer-count")).to_have_text("3 processors")
        expect(other.locator('#designer-graph [id="edge-orders-audit_orders"]')).to_have_class(
            re.compile(r"\bmismatch\b")
        )
        expect(other.get_by_test_id("inspector-title")).to_have_text("audit_orders")
        assert [
            n.get_attribute("data-processor") for n in other.locator("#designer-selected li").all()
        ] == ["extract_orders", "parse_orders", "audit_orders"]
        assert errors == []
    finally:
        context.close()
    assert console_errors == []


def _smallest_graph_text(page: Page, selector: str) -> float:
    heights: list[float] = page.evaluate(
        """(selector) => Array.from(document.querySelectorAll(selector + ' svg text'))
            .map(t => t.getBoundingClientRect().height).filter(h => h > 0)""",
        selector,
    )
    assert heights, f"no graph text under {selector}"
    return min(heights)


@pytest.mark.parametrize("width", [1400, 1000])
def test_graph_text_is_readable(
    browser: Browser,
    dashboard: str,
    demo_stack: DemoProcess,
    width: int,
    shoot: Callable[[Page, str], None],
) -> None:
    context = browser.new_context(viewport={"width": width, "height": 900})
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"{dashboard}/runs/{demo_stack.live_run_id}")
        expect(page.locator('[id="node-daily_report"]')).to_be_visible()
        # The wait=True stage is drawn apart, on the run view too.
        expect(page.locator('[id="stage-2"]')).to_contain_text("stage 2")
        expect(page.locator('[id="stage-1"]')).to_contain_text("stage 1")
        assert _smallest_graph_text(page, "#content") >= MIN_TEXT_PX
        shoot(page, f"run-{width}")
        page.goto(dashboard + "/designer?flow=orders-etl")
        expect(page.get_by_test_id("designer-count")).to_have_text("7 processors")
        expect(page.locator('#designer-graph [id="stage-2"]')).to_be_visible()
        assert _smallest_graph_text(page, "#designer-graph") >= MIN_TEXT_PX
        shoot(page, f"designer-{width}")
        assert errors == []
    finally:
        context.close()
