"""The vendored htmx and its SSE extension work in real Chromium, under the
base layout and a strict Content-Security-Policy.

A small threaded HTTP server serves ``static/`` and pages that extend
``templates/base.html``; no dashboard app is involved.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jinja2
import pytest
from playwright.sync_api import Page, expect

from web.graph import render_svg

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "static"

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
CSRF_TOKEN = "csrf-token-for-tests"

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(REPO / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def _page(content: str, **context: object) -> bytes:
    """A page extending base.html with ``content`` as its content block."""
    source = (
        '{% extends "base.html" %}{% set active_page = "runs" %}'
        "{% block title %}Smoke{% endblock %}"
        "{% block content %}" + content + "{% endblock %}"
    )
    html = _templates.from_string(source).render(csrf_token=CSRF_TOKEN, **context)
    return html.encode("utf-8")


SWAP_PAGE = """
<h1>Swap</h1>
<button class="btn btn-primary" hx-get="/fragment" hx-target="#target">Load</button>
<div id="target">nothing yet</div>
"""

SSE_PAGE = """
<h1>Live</h1>
<div id="ticker" sse-connect="/events" sse-swap="tick">waiting</div>
"""

GRAPH_PAGE = """
<h1>Graph</h1>
<div class="graph-view">{{ svg | safe }}</div>
"""

GRAPH_DOT = """
digraph flow {
  rankdir=LR;
  node [shape=box];
  src [id="node-src" class="state-succeeded" label="source"];
  enrich [id="node-enrich" class="state-running" label="enrich"];
  sink [id="node-sink" class="state-pending" label="sink"];
  src -> enrich [id="edge-users" class="heat-1" label="users"];
  enrich -> sink [id="edge-enriched" class="heat-4" label="enriched"];
}
"""


@dataclass
class SmokeServer:
    """What the test server saw, and how to reach it."""

    base_url: str
    stop: threading.Event
    fragment_requests: list[dict[str, str]] = field(default_factory=list)


def _make_handler(state: SmokeServer) -> type[BaseHTTPRequestHandler]:
    pages: dict[str, Callable[[], bytes]] = {
        "/": lambda: _page(SWAP_PAGE),
        "/sse": lambda: _page(SSE_PAGE),
        "/graph": lambda: _page(GRAPH_PAGE, svg=render_svg(GRAPH_DOT)),
    }

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Security-Policy", CSP)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path in pages:
                self._send(HTTPStatus.OK, "text/html; charset=utf-8", pages[path]())
            elif path == "/fragment":
                state.fragment_requests.append(dict(self.headers.items()))
                body = b'<p id="swapped">Swapped by htmx</p>'
                self._send(HTTPStatus.OK, "text/html; charset=utf-8", body)
            elif path == "/events":
                self._stream_events()
            elif path.startswith("/static/"):
                self._send_static(path.removeprefix("/static/"))
            else:
                self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found")

        def _send_static(self, name: str) -> None:
            file = STATIC / name
            if file.parent != STATIC or not file.is_file():
                self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found")
                return
            types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
            content_type = types.get(file.suffix, "application/octet-stream")
            self._send(HTTPStatus.OK, content_type, file.read_bytes())

        def _stream_events(self) -> None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            try:
                for tick in (1, 2):
                    message = f'event: tick\ndata: <b class="tick">tick {tick}</b>\n\n'
                    self.wfile.write(message.encode())
                    self.wfile.flush()
                    state.stop.wait(0.1)
                # Keep the stream open, as a live view would, until the client
                # goes away or the server stops.
                while not state.stop.wait(0.2):
                    self.wfile.write(b": ping\n\n")
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler


@pytest.fixture(scope="module")
def smoke_server() -> Iterator[SmokeServer]:
    state = SmokeServer(base_url="", stop=threading.Event())
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    server.daemon_threads = True
    host, port = server.server_address[:2]
    state.base_url = f"http://{host!s}:{port}"
    thread = threading.Thread(target=server.serve_forever, name="smoke-server")
    thread.start()
    try:
        yield state
    finally:
        state.stop.set()
        server.shutdown()
        server.server_close()
        thread.join()


def test_hx_get_swaps_fragment_and_sends_csrf_header(
    page: Page, smoke_server: SmokeServer, console_errors: list[str]
) -> None:
    page.goto(smoke_server.base_url + "/")
    expect(page).to_have_title("Smoke · Datagraph")
    expect(page.locator('.nav-links a[aria-current="page"]')).to_have_text("Runs")

    page.get_by_role("button", name="Load").click()

    expect(page.locator("#target #swapped")).to_have_text("Swapped by htmx")
    headers = smoke_server.fragment_requests[-1]
    assert headers.get("HX-Request") == "true"
    assert headers.get("X-CSRF-Token") == CSRF_TOKEN
    assert console_errors == []


def test_sse_extension_swaps_events_into_page(
    page: Page, smoke_server: SmokeServer, console_errors: list[str]
) -> None:
    page.goto(smoke_server.base_url + "/sse")

    expect(page.locator("#ticker .tick")).to_have_text("tick 2")
    assert console_errors == []


def test_inline_graph_keeps_ids_and_takes_state_colours(
    page: Page, smoke_server: SmokeServer, console_errors: list[str]
) -> None:
    page.goto(smoke_server.base_url + "/graph")

    expect(page.locator(".graph-view svg")).to_be_visible()
    expect(page.locator("#edge-users text")).to_have_text("users")
    # --running-fg and --heat-4 from app.css, over Graphviz's black strokes.
    expect(page.locator("#node-enrich polygon")).to_have_css("stroke", "rgb(10, 85, 184)")
    expect(page.locator("#edge-enriched path")).to_have_css("stroke", "rgb(211, 47, 47)")
    assert console_errors == []
