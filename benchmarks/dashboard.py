"""dashboard: how fast the pages answer while a fleet is running.

Set-up (untimed): 200 registered processors, and 300 running runs of a
one-processor flow whose processor has read its input and then parks (waits
on an event), so the machine's CPU is the dashboard's, not the runs'.  The
dashboard is the real app served by uvicorn on a free port in this process;
an httpx client asks for each page one request at a time.

Printed per page: p50 and p99 over the requests, and the store round trips
and commands per request (round trips: calls into the glide client from this
process while the page is asked for, minus the background rate measured
with no requests; commands: Valkey's ``total_commands_processed``).  Then the
time to the first event of ``/events/operations`` and ``/events/runs/{id}``.

Baseline: ``/healthz`` (the app and the HTTP path, one store PING), in the
same session.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
from glide import GlideClient

from datagraph import IO, Flow, IOVal, Processor
from datagraph.registration import publish_registrations

from ._harness import Bench, Session, percentile

NAME = "dashboard"
BACKEND = "asyncio"
RUNNING = 300
REGISTERED = 200
#: Seconds the first SSE event may take before the benchmark gives up on it.
SSE_DEADLINE = 30.0


class _Parking:
    """Where the parked processors wait until the benchmark lets them finish."""

    def __init__(self) -> None:
        self.released: anyio.Event | None = None


parking = _Parking()
park = Processor("bench-park", inputs=["n"], outputs=["out"])


@park
async def _park(n: IO[int]) -> AsyncIterator[IOVal[int]]:
    value = await n.first()
    assert parking.released is not None
    await parking.released.wait()
    yield IOVal("out", value)


PARKED = Flow.from_processors(park, name="bench-parked").resolve()


def _registered(count: int) -> list[Processor]:
    """``count`` implemented processors with a few typed ports each (not run, only published)."""
    made = []
    for i in range(count):
        spec = Processor(f"bench-reg-{i:03d}", inputs=[f"in{i}", "config"], outputs=[f"out{i}"])

        async def body(**inputs: IO[Any]) -> AsyncIterator[IOVal[Any]]:
            yield IOVal("x", 0)

        spec(body)
        made.append(spec)
    return made


class _RoundTrips:
    """Counts calls into glide clients (each one is one round trip to the store)."""

    def __init__(self) -> None:
        self.count = 0
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> _RoundTrips:
        for name in ("exec", "custom_command"):
            original = getattr(GlideClient, name)
            self._saved[name] = original

            def counted(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                self.count += 1
                return _original(*args, **kwargs)

            setattr(GlideClient, name, counted)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, original in self._saved.items():
            setattr(GlideClient, name, original)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _commands(session: Session) -> int:
    info = await session.admin.custom_command(["INFO", "stats"])
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("total_commands_processed:"):
            return int(line.split(":", 1)[1])
    raise RuntimeError("INFO stats has no total_commands_processed field")


async def _first_event(client: httpx.AsyncClient, path: str) -> float:
    """Seconds from asking for ``path`` to its first ``data:`` line."""
    began = time.perf_counter()
    with anyio.fail_after(SSE_DEADLINE):
        async with client.stream("GET", path) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    return time.perf_counter() - began
    raise RuntimeError(f"{path} ended before its first event")


def run(bench: Bench) -> dict[str, Any]:
    requests = bench.pick(10, 30)
    sse_tries = bench.pick(3, 5)
    bench.title(
        NAME,
        f"{RUNNING} running runs (parked) and {REGISTERED} registered processors; "
        f"uvicorn in this process; {requests} requests per page",
    )

    async def measure(session: Session) -> dict[str, Any]:
        import uvicorn

        from web.app import create_app

        supervisor = session.supervisor
        parking.released = anyio.Event()
        await publish_registrations(supervisor, _registered(REGISTERED))
        run_ids = []
        for _ in range(RUNNING):
            outputs = await supervisor.start_flow(PARKED, inputs=[IOVal("n", 1)])
            run_ids.append(outputs["out"].run_id)
        figures: dict[str, Any] = {}
        port = _free_port()
        app = create_app(supervisor=supervisor, token="", warm_up_graphviz=False)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.serve)
                with anyio.fail_after(30):
                    # uvicorn offers a flag, not an event, for "listening".
                    while not server.started:  # noqa: ASYNC110
                        await anyio.sleep(0.05)
                await anyio.sleep(1.5)  # every parked processor has read its input and published
                base = f"http://127.0.0.1:{port}"
                async with httpx.AsyncClient(base_url=base, timeout=SSE_DEADLINE) as client:
                    with _RoundTrips() as trips:
                        idle_from, idle_began = trips.count, time.perf_counter()
                        await anyio.sleep(1.0)
                        background = (trips.count - idle_from) / (time.perf_counter() - idle_began)
                        pages = ["/healthz", "/operations", "/runs", "/processors",
                                 f"/runs/{run_ids[0]}", "/metrics"]  # fmt: skip
                        for path in pages:
                            (await client.get(path)).raise_for_status()  # warm
                            times = []
                            before, commands_before = trips.count, await _commands(session)
                            began = time.perf_counter()
                            for _ in range(requests):
                                asked = time.perf_counter()
                                (await client.get(path)).raise_for_status()
                                times.append(time.perf_counter() - asked)
                            spent = time.perf_counter() - began
                            calls = trips.count - before - background * spent
                            # Less the INFO probe itself (1 command).
                            commands = await _commands(session) - commands_before - 1
                            figures[path] = {
                                "p50_ms": percentile(times, 50) * 1000,
                                "p99_ms": percentile(times, 99) * 1000,
                                "round_trips": max(0.0, calls / requests),
                                "commands": commands / requests,
                            }
                    for path in ("/events/operations", f"/events/runs/{run_ids[0]}"):
                        # A fresh viewer each time: the first one pays for the poller's first read.
                        firsts = [await _first_event(client, path) for _ in range(sse_tries)]
                        # The first viewer starts the poller (cold); later ones join it.
                        figures[path] = {
                            "first_event_ms": firsts[0] * 1000,
                            "joining_ms": percentile(firsts[1:], 50) * 1000,
                        }
                server.should_exit = True
        finally:
            parking.released.set()
        for run_id in run_ids:
            await session.finish(run_id, PARKED)
        return figures

    got: dict[str, Any] = bench.session(BACKEND, measure)
    base = got["/healthz"]["p50_ms"]
    for path, figure in got.items():
        shown = "/runs/{id}" if path.startswith("/runs/") else path
        shown = "/events/runs/{id}" if path.startswith("/events/runs/") else shown
        if "first_event_ms" in figure:
            bench.row(f"{shown}, first event", f"{figure['first_event_ms']:.1f} ms",
                      f"{figure['first_event_ms'] / base:.1f}x /healthz",
                      f"first viewer; {figure['joining_ms']:.1f} ms joining it")  # fmt: skip
            continue
        bench.row(
            shown,
            f"p50 {figure['p50_ms']:.1f} ms",
            "baseline" if path == "/healthz" else f"{figure['p50_ms'] / base:.1f}x /healthz",
            f"p99 {figure['p99_ms']:.1f} ms; {figure['round_trips']:.1f} round trips, "
            f"{figure['commands']:.0f} commands per request",
        )
    summary = {
        "pages_p50_ms": {
            path: f["p50_ms"] for path, f in got.items() if "p50_ms" in f and path != "/healthz"
        },
        "slowest_page_p50_ms": max(f["p50_ms"] for p, f in got.items() if "p50_ms" in f and p != "/healthz"),
        "first_event_ms": max(f["first_event_ms"] for f in got.values() if "first_event_ms" in f),
    }
    bench.record(NAME, running=RUNNING, registered=REGISTERED, pages=got, **summary)
    return got
