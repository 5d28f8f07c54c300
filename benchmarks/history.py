"""history: what recording each run's history costs, in throughput, memory and page time.

- throughput: the pipeline with ``history=True`` vs ``history=False``
  (telemetry on in both), sessions alternating so both see the same load;
  runs long enough to take several samples each.
- memory: a 30-edge chain's history after an hour (900 one-second samples
  and 60 one-minute ones), written by the engine's own sampling script, per
  edge (``MEMORY USAGE`` of the two history streams).
- page: the run view of that 30-edge run with 15 minutes of history vs the
  same page with its history deleted, p50 over repeated requests.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from datagraph import IO, Flow, IOVal, Processor
from datagraph.store import keys
from datagraph.store.scripts import HISTORY_COARSE_SECONDS, HISTORY_FINE_SECONDS, sample_history_command

from ._flows import PIPELINE
from ._harness import FIGURES_NOTE, Bench, Session, fmt_rate, on_vs_off
from .pipeline import flow_rate, warm_up

NAME = "history"
BACKEND = "asyncio"
#: Stages of the chain whose history is measured (30 edges: the run input and 29 in-flow).
STAGES = 30


def run(bench: Bench) -> dict[str, Any]:
    got: dict[str, Any] = {}
    got["throughput"] = _throughput(bench)
    got.update(_memory_and_page(bench))
    bench.record(NAME, **got)
    return got


# -- throughput ------------------------------------------------------------------------


def _throughput(bench: Bench) -> dict[str, Any]:
    n = bench.pick(600_000, 2_000_000)
    rounds = bench.pick(3, 5)
    bench.title(NAME, f"the pipeline with history on vs off; N={n:,}, {BACKEND}, {rounds} rounds each way")
    bench.say(f"  {FIGURES_NOTE}")

    async def once(session: Session) -> float:
        await warm_up(session)
        return await flow_rate(session, PIPELINE, n)

    on, off, ratio = on_vs_off(bench, BACKEND, once, "history", rounds)
    bench.row("history=False", fmt_rate(off), "baseline")
    bench.row("history=True", fmt_rate(on), f"{ratio:.3f}x history off", f"overhead {1 - ratio:+.1%}")
    return {"n": n, "rounds": rounds, "on": on, "off": off, "on_vs_off": ratio}


# -- a 30-edge chain with an hour of history ------------------------------------------------

_chain = [
    Processor(f"bench-hist-{i}", inputs=[f"h{i}"], outputs=[f"h{i + 1}"]) for i in range(STAGES)
]


def _chain_flow() -> Flow:
    for i, spec in enumerate(_chain):
        if spec.implementation is None:
            _implement_stage(spec, i)
    return Flow.from_processors(*_chain, name="bench-history-chain").resolve()


def _implement_stage(spec: Processor, i: int) -> None:
    """Stage ``i`` passes its input on (the parameter is named after the input)."""
    source = (
        "async def stage(h{i}):\n"
        "    async for value in h{i}:\n"
        "        yield IOVal('h{j}', value)\n"
        if i
        else "async def stage(h0):\n"
        "    for value in range(await h0.first()):\n"
        "        yield IOVal('h1', value)\n"
    ).format(i=i, j=i + 1)
    namespace: dict[str, Any] = {"IOVal": IOVal}
    exec(source, namespace)  # names its parameter after its input, as processors bind by name
    stage = namespace["stage"]
    stage.__annotations__ = {f"h{i}": IO[int]}
    spec(stage)


async def _fill_history(session: Session, run_id: str) -> None:
    """An hour of history as the engine writes it: 900 one-second samples and 60 one-minute ones."""
    admin = session.admin
    stats, pos = keys.stats(run_id), keys.pos(run_id)
    # The run's keys live for the hour (a finished run's retention).
    await admin.custom_command(["EXPIRE", stats, "86400"])
    for sample in range(HISTORY_FINE_SECONDS):
        fields: list[str] = []
        for i in range(STAGES):
            written = sample * 1000 + i
            fields += [f"written:h{i + 1}", str(written)]
            name = f"bench-hist-{i}"
            fields += [f"busy:{name}", f"{sample * 0.7:.3f}", f"idle:{name}", f"{sample * 0.2:.3f}"]
            fields += [f"bp:{name}", f"{sample * 0.1:.3f}"]
        await admin.custom_command(["HSET", stats, *fields])
        positions = [(f"bench-hist-{i}/h{i}", str(sample * 1000)) for i in range(1, STAGES)]
        await admin.custom_command(["HSET", pos, *(part for pair in positions for part in pair)])
        await admin.custom_command(sample_history_command(run_id, force=True))
    # The coarse stream: one sample a minute, as the script adds them.
    latest = await admin.custom_command(["XREVRANGE", keys.history(run_id), "+", "-", "COUNT", "1"])
    fields_of = next(iter(latest.values())) if isinstance(latest, dict) else latest[0][1]
    flat = [part for pair in fields_of for part in pair]
    await admin.custom_command(["DEL", keys.history_coarse(run_id)])
    for _ in range(3600 // HISTORY_COARSE_SECONDS):
        await admin.custom_command(["XADD", keys.history_coarse(run_id), "*", *flat])


def _memory_and_page(bench: Bench) -> dict[str, Any]:
    requests = bench.pick(15, 40)
    bench.title(
        NAME,
        f"a {STAGES}-edge chain with an hour of history: memory per edge; the run page with 15 min "
        f"of history vs without (p50 of {requests} requests)",
    )
    flow = _chain_flow()

    async def measure(session: Session) -> dict[str, Any]:
        out = await session.supervisor.start_flow(flow, [IOVal("h0", 1000)])
        await out[f"h{STAGES}"].collect()
        run_id = out[f"h{STAGES}"].run_id
        await session.supervisor.wait(run_id, timeout=60)
        await _fill_history(session, run_id)
        admin = session.admin
        fine, coarse, names = [
            await admin.custom_command(["MEMORY", "USAGE", key, "SAMPLES", "0"])
            for key in (keys.history(run_id), keys.history_coarse(run_id), keys.history_names(run_id))
        ]
        edges = STAGES  # the run input and 29 in-flow edges (the output to the caller rides on the last)
        with_history = await _page_figures(session, run_id, requests)
        await admin.custom_command(
            ["DEL", keys.history(run_id), keys.history_coarse(run_id), keys.history_names(run_id)]
        )
        without = await _page_figures(session, run_id, requests, only_page=True)
        return {
            "memory_per_edge_bytes": (fine + coarse + names) / edges,
            "memory_bytes": fine + coarse + names,
            "page_p50_ms": with_history["page"] * 1000,
            "page_first_view_p50_ms": with_history["page_first"] * 1000,
            "page_round_trips": with_history["page_trips"],
            "page_first_view_round_trips": with_history["page_first_trips"],
            "feed_poll_p50_ms": with_history["poll"] * 1000,
            "feed_first_poll_p50_ms": with_history["poll_first"] * 1000,
            "api_p50_ms": with_history["api"] * 1000,
            "api_first_p50_ms": with_history["api_first"] * 1000,
            "page_without_history_p50_ms": without["page"] * 1000,
            "page_cpu_ms": with_history["page_cpu"] * 1000,
            "page_first_view_cpu_ms": with_history["page_first_cpu"] * 1000,
            "page_without_history_cpu_ms": without["page_cpu"] * 1000,
        }

    got = bench.session(BACKEND, measure)
    per_edge = got["memory_per_edge_bytes"]
    base = got["page_without_history_p50_ms"]
    bench.row("history memory, 1 hour, per edge", f"{per_edge / 1024:.1f} KiB", "target < 100 KiB")
    bench.row("history memory, 1 hour, whole run", f"{got['memory_bytes'] / 1024:.0f} KiB")
    bench.row(
        "run page without history, p50", f"{base:.1f} ms", "baseline",
        f"CPU {got['page_without_history_cpu_ms']:.1f} ms",
    )
    ratio = got["page_p50_ms"] / base
    bench.row(
        "run page with 15 min of history, p50", f"{got['page_p50_ms']:.1f} ms", f"{ratio:.2f}x without",
        f"target < 150 ms; CPU {got['page_cpu_ms']:.1f} ms; {got['page_round_trips']:.1f} round trips",
    )
    first = got["page_first_view_p50_ms"]
    bench.row(
        "  the same, first view (nothing cached)", f"{first:.1f} ms", f"{first / base:.2f}x without",
        f"CPU {got['page_first_view_cpu_ms']:.1f} ms; {got['page_first_view_round_trips']:.1f} round trips",
    )
    for label, key in (
        ("live feed poll (SSE), p50", "feed_poll_p50_ms"),
        ("  first poll of a new feed", "feed_first_poll_p50_ms"),
        ("/api/runs/{id}/history, p50", "api_p50_ms"),
        ("  first request (nothing cached)", "api_first_p50_ms"),
    ):
        bench.row(label, f"{got[key]:.1f} ms", f"{got[key] / base:.2f}x without")
    got["page_vs_without"] = ratio
    return got


async def _page_figures(
    session: Session, run_id: str, requests: int, *, only_page: bool = False
) -> dict[str, float]:
    """p50 seconds of the run page, asked again and again and as a first view (the dashboard's
    history cache emptied before each), of a poll of the run's live feed (the same, on one feed
    and on a new feed each time) and of the history API (the same); and the page's store round
    trips per request."""
    import httpx

    from web.app import create_app
    from web.views import run_feed

    from .dashboard import _RoundTrips

    app = create_app(supervisor=session.supervisor, warm_up_graphviz=False, token="")
    got: dict[str, float] = {}
    async with app.router.lifespan_context(app):
        dashboard = app.state.dashboard
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:

            async def page() -> None:
                response = await client.get(f"/runs/{run_id}")
                if response.status_code != 200:
                    raise RuntimeError(f"run page answered {response.status_code}")

            async def api() -> None:
                response = await client.get(f"/api/runs/{run_id}/history")
                if response.status_code != 200:
                    raise RuntimeError(f"history API answered {response.status_code}")

            feed = run_feed(dashboard, run_id)

            async def poll() -> None:
                await feed.poll()

            async def first_poll() -> None:
                dashboard.histories = type(dashboard.histories)()
                await run_feed(dashboard, run_id).poll()

            def first(ask: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
                async def cold() -> None:
                    dashboard.histories = type(dashboard.histories)()
                    await ask()
                return cold

            cpu: list[float] = []
            with _RoundTrips() as trips:
                got["page"] = await _p50(page, requests, cpu)
                got["page_trips"] = trips.count / (requests + 2)
            got["page_cpu"] = cpu[-1]
            if only_page:
                return got
            with _RoundTrips() as trips:
                got["page_first"] = await _p50(first(page), requests, cpu)
                got["page_first_trips"] = trips.count / (requests + 2)
            got["page_first_cpu"] = cpu[-1]
            got["poll"] = await _p50(poll, requests)
            got["poll_first"] = await _p50(first_poll, requests)
            got["api"] = await _p50(api, requests)
            got["api_first"] = await _p50(first(api), requests)
    await anyio.lowlevel.checkpoint()
    return got


async def _p50(ask: Callable[[], Awaitable[None]], requests: int, cpu: list[float] | None = None) -> float:
    """The median seconds of ``requests`` calls of ``ask``, after two that warm up
    (the first renders warm the Graphviz module and the templates); the median CPU
    seconds of this thread per call is appended to ``cpu`` (what other load on the
    machine does not stretch)."""
    times: list[float] = []
    cpu_times: list[float] = []
    for attempt in range(requests + 2):
        started, started_cpu = time.perf_counter(), time.thread_time()
        await ask()
        elapsed, elapsed_cpu = time.perf_counter() - started, time.thread_time() - started_cpu
        if attempt >= 2:
            times.append(elapsed)
            cpu_times.append(elapsed_cpu)
    if cpu is not None:
        cpu.append(statistics.median(cpu_times))
    return statistics.median(times)
