"""Fixtures that drive a real Chromium through Playwright's sync API.

``browser`` launches Debian's Chromium (``/usr/bin/chromium``), installing it
first (``tests/debian.py``) when it is missing. ``page`` opens
a fresh browser context per test, so cookies and storage never leak between
tests; ``console_errors`` collects what the page logged as an error
(CSP violations, failed loads, uncaught exceptions).

Scope: while Playwright's sync API is started, the main thread has an asyncio
loop marked as running, and any ``anyio.run``/asyncio-backed test in between
fails with "Cannot run the event loop while another loop is running". The
browser therefore lives for this package only: it is closed when the last
test under ``tests/e2e`` has run. For the same reason, tests here are plain
sync tests; a server they talk to runs in a thread of its own.

``demo_stack`` runs ``datagraph demo`` (``datagraph/demo/run.py``) in a
subprocess, once for the package: an embedded Valkey, a real ``celery
worker`` with the demo service, the dashboard on a free port, the demo flows
saved and a continuous demo run. Its own process keeps this one's
registrations (test modules implement processors at import) out of the
dashboard. At the end it is stopped with Ctrl-C, which must stop everything:
the fixture fails if the demo exits badly or leaves its worker behind.
``dashboard`` is its base URL. ``shoot(page, name)`` saves a full-page
screenshot into ``$E2E_SCREENSHOTS`` when that is set (handy while writing
a test).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.debian import chromium

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
# Expectations wait as long as actions do (Playwright's own default is 5 s, short
# on a loaded 2-core machine); a test passes a longer timeout where it needs one.
expect.set_options(timeout=DEFAULT_TIMEOUT_MS)
#: Seconds ``datagraph demo`` may take to print its banner, and to stop after Ctrl-C.
DEMO_START_DEADLINE = 60.0
DEMO_STOP_DEADLINE = 30.0

_CALL_FAILED = pytest.StashKey[bool]()


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    executable = chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
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


@dataclass(frozen=True)
class DemoProcess:
    """A running ``datagraph demo``, as its banner describes it."""

    process: subprocess.Popen[bytes]
    output: Path
    #: The dashboard's base URL (no trailing slash).
    url: str
    #: The demo's Celery worker, and its continuous run.
    worker_pid: int
    live_run_id: str


_BANNER = re.compile(
    r"dashboard\s+(?P<url>http://\S+?)/?\n.*?\(pid (?P<pid>\d+),.*?"
    r"live run\s+\S+/runs/(?P<run>[0-9a-f]{32})",
    re.DOTALL,
)


@pytest.fixture(scope="package")
def demo_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoProcess]:
    """``datagraph demo`` in a subprocess, as a user starts it; stopped with Ctrl-C (SIGINT)."""
    from datagraph.embedded import die_with_parent

    output = tmp_path_factory.mktemp("demo") / "demo.out"
    # The demo's own settings, not whatever the environment says.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAGRAPH_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["TMPDIR"] = str(output.parent)
    # A gentler continuous run than the default, to leave CPU to the browser.
    command = [sys.executable, "-m", "datagraph", "demo", "--port", "0", "--no-browser", "--rate", "200"]
    with output.open("wb") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            preexec_fn=die_with_parent(), start_new_session=True,
        )
    try:
        deadline = time.monotonic() + DEMO_START_DEADLINE
        while (match := _BANNER.search(output.read_text(errors="replace"))) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"datagraph demo did not start within {DEMO_START_DEADLINE:.0f}s "
                    f"(exit status {process.poll()}):\n{output.read_text(errors='replace')[-4000:]}",
                    pytrace=False,
                )
            time.sleep(0.1)
        demo = DemoProcess(process, output, match["url"], int(match["pid"]), match["run"])
        yield demo
    finally:
        _stop_demo(process, output)
    # Nothing outlives the demo: its worker was stopped with it.
    with pytest.raises(ProcessLookupError):
        os.kill(demo.worker_pid, 0)


def _stop_demo(process: subprocess.Popen[bytes], output: Path) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(DEMO_STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
            pytest.fail(
                f"datagraph demo did not stop within {DEMO_STOP_DEADLINE:.0f}s of Ctrl-C:\n"
                + output.read_text(errors="replace")[-4000:],
                pytrace=False,
            )
    if process.returncode != 0:
        pytest.fail(
            f"datagraph demo exited with status {process.returncode}:\n"
            + output.read_text(errors="replace")[-4000:],
            pytrace=False,
        )


@pytest.fixture
def dashboard(demo_stack: DemoProcess) -> str:
    """Base URL of the demo's dashboard (no trailing slash)."""
    return demo_stack.url


@pytest.fixture
def shoot(request: pytest.FixtureRequest) -> Callable[[Page, str], None]:
    folder = os.environ.get("E2E_SCREENSHOTS")

    def take(page: Page, name: str) -> None:
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            # caret="initial": hiding the caret injects a style the CSP refuses (a console error).
            path = Path(folder) / f"{request.node.name}-{name}.png"
            page.screenshot(path=path, full_page=True, caret="initial")

    return take


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report
