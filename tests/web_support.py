"""Shared by the dashboard tests: processors, an app on the test Valkey, an SSE reader.

httpx's ASGI transport collects a whole response before returning it, which
an endless event stream never ends; :func:`open_sse` therefore drives the
ASGI app directly and hands events over as they are sent, then disconnects.
"""

from __future__ import annotations

import html as html_module
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
from fastapi import FastAPI
from pydantic import BaseModel

from datagraph import IO, IOVal, Processor, Supervisor
from web.app import create_app

# -- processors implemented in the test process --------------------------------------


class WebOrder(BaseModel):
    id: int
    customer: str
    amount: float = 0.0


web_source = Processor("web_source", inputs=["web_count"], outputs=["web_numbers"])
web_double = Processor("web_double", inputs=["web_numbers"], outputs=["web_doubled"])
web_fail = Processor("web_fail", inputs=["web_trigger"], outputs=["web_never"])
web_xss = Processor("web_xss", inputs=["web_xss_in"], outputs=["web_xss_out"])
web_cycle_a = Processor("web_cycle_a", inputs=["web_ca"], outputs=["web_cb"])
web_cycle_b = Processor("web_cycle_b", inputs=["web_cb"], outputs=["web_ca"])
web_dup = Processor("web_dup", inputs=["web_other"], outputs=["web_numbers"])
web_typed = Processor(
    "web_typed",
    inputs=["web_i", "web_f", "web_s", "web_b", "web_l", "web_m", "web_o"],
    outputs=["web_typed_out"],
)
web_slow = Processor("web_slow", inputs=["web_slow_n"], outputs=["web_slow_out"])


@web_source
async def _web_source(web_count: IO[int]) -> AsyncIterator[IOVal[int]]:
    """Counts from zero up to ``web_count``."""
    for i in range(await web_count.first()):
        yield IOVal(name="web_numbers", value=i)


@web_double
async def _web_double(web_numbers: IO[int]) -> AsyncIterator[IOVal[int]]:
    """Doubles every number."""
    async for value in web_numbers.stream():
        yield IOVal(name="web_doubled", value=value * 2)


@web_fail
async def _web_fail(web_trigger: IO[int]) -> AsyncIterator[IOVal[int]]:
    """Fails on purpose."""
    value = await web_trigger.first()
    raise RuntimeError(f"web_fail exploded on {value}")
    yield IOVal(name="web_never", value=value)  # pragma: no cover


@web_xss
async def _web_xss(web_xss_in: IO[dict[str, int]]) -> AsyncIterator[IOVal[str]]:
    """Echoes <script>alert('doc')</script> back."""
    await web_xss_in.first()
    yield IOVal(name="web_xss_out", value="<script>alert('value')</script>")


@web_cycle_a
async def _web_cycle_a(web_ca: IO[int]) -> AsyncIterator[IOVal[int]]:
    async for value in web_ca.stream():
        yield IOVal(name="web_cb", value=value)


@web_cycle_b
async def _web_cycle_b(web_cb: IO[int]) -> AsyncIterator[IOVal[int]]:
    async for value in web_cb.stream():
        yield IOVal(name="web_ca", value=value)


@web_dup
async def _web_dup(web_other: IO[int]) -> AsyncIterator[IOVal[int]]:
    async for value in web_other.stream():
        yield IOVal(name="web_numbers", value=value)


@web_typed
async def _web_typed(
    web_i: IO[int],
    web_f: IO[float],
    web_s: IO[str],
    web_b: IO[bool],
    web_l: IO[list[int]],
    web_m: IO[WebOrder],
    web_o: IO[int | None],
) -> AsyncIterator[IOVal[str]]:
    order = await web_m.first()
    yield IOVal(name="web_typed_out", value=f"{type(order).__name__}:{order.customer}")


@web_slow
async def _web_slow(web_slow_n: IO[int]) -> AsyncIterator[IOVal[int]]:
    for i in range(await web_slow_n.first()):
        yield IOVal(name="web_slow_out", value=i)
        await anyio.sleep(0.02)


# -- the app ---------------------------------------------------------------------------


@asynccontextmanager
async def open_dashboard(
    supervisor: Supervisor | None = None, **options: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """``create_app(...)`` started (its lifespan entered) and a client on it."""
    options.setdefault("warm_up_graphviz", False)
    app = create_app(supervisor=supervisor, **options)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield app, client


async def csrf_token(client: httpx.AsyncClient) -> str:
    """The CSRF token of the client's browser session (fetching a page sets it)."""
    token = client.cookies.get("dg_csrf")
    if token is None:
        await client.get("/healthz")
        token = client.cookies.get("dg_csrf")
    assert token, "no CSRF cookie was set"
    return token


def text_of(html: str) -> str:
    """Page text without tags, for assertions on what a reader sees."""
    return html_module.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)))


# -- server-sent events --------------------------------------------------------------


@dataclass
class Event:
    event: str
    data: str


@dataclass
class SSEStream:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    _receive: Any = None
    _buffer: str = ""
    _pending: list[Event] = field(default_factory=list)

    async def next_event(self) -> Event:
        """The next event (comments and pings skipped)."""
        while not self._pending:
            message = await self._receive.receive()
            if message["type"] != "http.response.body":
                continue
            self._buffer += message.get("body", b"").decode()
            self._buffer = self._buffer.replace("\r\n", "\n")
            while "\n\n" in self._buffer:
                block, self._buffer = self._buffer.split("\n\n", 1)
                name, data = "message", []
                for line in block.split("\n"):
                    if line.startswith("event:"):
                        name = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
                if data:
                    self._pending.append(Event(name, "\n".join(data)))
            if not message.get("more_body", False) and not self._pending:
                raise EOFError("the event stream ended")
        return self._pending.pop(0)

    async def until(self, name: str) -> Event:
        while True:
            event = await self.next_event()
            if event.event == name:
                return event


@asynccontextmanager
async def open_sse(
    app: FastAPI, url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[SSEStream]:
    """GET ``url`` from ``app`` as a browser's EventSource would; disconnect on exit."""
    parts = urlsplit(url)
    raw_headers = [(b"host", b"testserver"), (b"accept", b"text/event-stream")]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": parts.path, "raw_path": parts.path.encode(),
        "query_string": parts.query.encode(), "root_path": "", "headers": raw_headers,
        "client": ("127.0.0.1", 50000), "server": ("testserver", 80), "state": {},
    }
    sender, receiver = anyio.create_memory_object_stream[dict[str, Any]](10_000)
    disconnected = anyio.Event()

    async def receive() -> dict[str, Any]:
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await sender.send(message)

    async def serve() -> None:
        async with sender:
            await app(scope, receive, send)

    stream = SSEStream(_receive=receiver)
    async with anyio.create_task_group() as tg, receiver:
        tg.start_soon(serve)
        start = await receiver.receive()
        assert start["type"] == "http.response.start"
        stream.status = start["status"]
        stream.headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
        try:
            yield stream
        finally:
            disconnected.set()
            with anyio.fail_after(10):
                # Drain until the app has finished answering the disconnect.
                async for _ in receiver:
                    pass
