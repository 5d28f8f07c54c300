"""Fixtures that drive a real Chromium through Playwright's sync API.

``browser`` launches Debian's Chromium (``/usr/bin/chromium``), installing it
first with ``scripts/ensure_chromium.sh`` when it is missing. ``page`` opens
a fresh browser context per test, so cookies and storage never leak between
tests; ``console_errors`` collects what the page logged as an error
(CSP violations, failed loads, uncaught exceptions).

Scope: while Playwright's sync API is started, the main thread has an asyncio
loop marked as running, and any ``anyio.run``/asyncio-backed test in between
fails with "Cannot run the event loop while another loop is running". The
browser therefore lives for this package only: it is closed when the last
test under ``tests/e2e`` has run. For the same reason, tests here are plain
sync tests; a server they talk to runs in a thread of its own.
"""

from __future__ import annotations

import subprocess
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
ENSURE_CHROMIUM = Path(__file__).resolve().parents[2] / "scripts" / "ensure_chromium.sh"

CHROMIUM_ARGS = [
    "--no-sandbox",  # tests run as root in containers, where the sandbox cannot start
    "--disable-gpu",
    "--disable-dev-shm-usage",  # Docker's default /dev/shm (64 MB) is too small
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

#: Milliseconds a Playwright action or expectation waits before failing.
DEFAULT_TIMEOUT_MS = 10_000

_CALL_FAILED = pytest.StashKey[bool]()


def _ensure_chromium() -> None:
    if CHROMIUM.exists():
        return
    completed = subprocess.run(
        ["sh", str(ENSURE_CHROMIUM)], capture_output=True, text=True, check=False
    )
    if completed.returncode != 0 or not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing and {ENSURE_CHROMIUM.name} could not install it "
            f"(exit status {completed.returncode}):\n{completed.stderr.strip()}",
            pytrace=False,
        )


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    _ensure_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def console_errors() -> list[str]:
    """Errors the test's page reported; assert on it where a clean console matters."""
    return []


@pytest.fixture
def page(
    browser: Browser,
    console_errors: list[str],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    page = context.new_page()
    page.on(
        "console",
        lambda message: console_errors.append(message.text) if message.type == "error" else None,
    )
    page.on("pageerror", lambda error: console_errors.append(f"uncaught: {error}"))
    try:
        yield page
        if request.node.stash.get(_CALL_FAILED, False):
            screenshot = tmp_path / "failure.png"
            page.screenshot(path=screenshot, full_page=True)
            print(f"screenshot of the failing page: {screenshot}")
    finally:
        context.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report
